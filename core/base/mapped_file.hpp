// A read-only memory mapping of a whole file. Weights in F32 are used in place from it.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

namespace rankscope {

class MappedFile {
 public:
  // Throws Error naming the file when it cannot be opened or mapped.
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  MappedFile(std::filesystem::path path, const std::byte* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// Fails (Error naming it) for a path that does not exist or is not a regular file: a FIFO would
// block a read forever, a device never end it.
void require_regular_file(const std::filesystem::path& path);

// The whole content of a regular file (require_regular_file first). Throws Error naming it.
std::string read_whole_file(const std::filesystem::path& path);

// Writes all `size` bytes to `fd` (retrying short writes and EINTR). Throws Error naming `path`.
void write_all(int fd, const void* data, size_t size, const std::filesystem::path& path);

}  // namespace rankscope
