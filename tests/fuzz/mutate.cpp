// The deterministic mutator (see fuzz.hpp).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <array>
#include <cctype>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>

#include "tests/fuzz/fuzz.hpp"

namespace rankscope::fuzz {

namespace {

// Numbers a config or header may carry that a careless reader sizes buffers or loops with.
constexpr std::array<std::string_view, 26> kExtremeNumbers = {
    "1e9", "1000000000", "4611686018427387904", "9223372036854775807", "9223372036854775808",
    "18446744073709551615", "18446744073709551616", "-1", "0", "-9223372036854775808", "1e308", "1e400",
    "-0", "3.5", "65536", "2147483647", "2147483648", "4294967295", "4294967296", "281474976710656",
    "16777216", "100000", "1073741824", "-2147483648", "2", "1"};

constexpr std::array<uint64_t, 12> kExtremeU64 = {0,       1,          0xffffffffull, 0x100000000ull,
                                                  1ull << 40, 1ull << 48, 1ull << 62,  1ull << 63,
                                                  ~0ull,   ~0ull - 7,  0x7fffffffffffffffull, 127};

constexpr std::array<unsigned char, 8> kInterestingBytes = {0x00, 0xff, 0x7f, 0x80, '"', '[', '{', '\\'};

// Deep enough to overflow any recursive walker of the structure (the crashes were at
// 50k-100k levels); a second size straddles the accepted depth limit (128).
constexpr size_t kDeepNestMin = 50000;
constexpr size_t kDeepNestSpan = 50000;

size_t position(Rng& rng, size_t size, size_t hot) {
  if (hot > 0 && rng.chance(80)) return rng.below(std::min(hot, size) + 1);
  return rng.below(size + 1);
}

// Start offsets of JSON number tokens (outside strings).
std::vector<std::pair<size_t, size_t>> number_tokens(const std::string& s) {
  std::vector<std::pair<size_t, size_t>> out;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
      continue;
    }
    if ((c >= '0' && c <= '9') || c == '-') {
      size_t j = i + 1;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '.' || s[j] == 'e' ||
                              s[j] == 'E' || s[j] == '+' || s[j] == '-')) {
        ++j;
      }
      out.emplace_back(i, j - i);
      i = j - 1;
    }
  }
  return out;
}

// [begin, end) of the contents of JSON string literals.
std::vector<std::pair<size_t, size_t>> string_tokens(const std::string& s) {
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '"') continue;
    size_t j = i + 1;
    while (j < s.size() && s[j] != '"') j += s[j] == '\\' ? 2 : 1;
    if (j >= s.size()) break;
    out.emplace_back(i + 1, j);
    i = j;
  }
  return out;
}

std::string deep_nest(Rng& rng, size_t depth) {
  std::string out;
  switch (rng.below(4)) {
    case 0:  // balanced arrays
      out.append(depth, '[');
      out.append(depth, ']');
      break;
    case 1: {  // balanced objects
      out.reserve(depth * 6);
      for (size_t i = 0; i < depth; ++i) out += "{\"a\":";
      out += "1";
      out.append(depth, '}');
      break;
    }
    case 2:  // unbalanced: the parser errors out deep inside
      out.append(depth, '[');
      break;
    default:  // mixed
      for (size_t i = 0; i < depth; ++i) out += i % 2 ? "{\"k\":" : "[";
      out += "0";
      for (size_t i = depth; i-- > 0;) out += i % 2 ? "}" : "]";
      break;
  }
  return out;
}

void put_u64(std::string& data, size_t pos, uint64_t v) {
  for (size_t i = 0; i < 8 && pos + i < data.size(); ++i) data[pos + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

}  // namespace

std::string mutate(std::string data, const SeedFile& file, Rng& rng, const std::vector<std::string>& dictionary,
                   const std::vector<const std::string*>& others, std::vector<std::string>& log) {
  const size_t n_mutations = 1 + rng.below(4);
  bool nested = false;  // at most one deep nesting per case (each is 100-600 kB)
  for (size_t m = 0; m < n_mutations; ++m) {
    // JSON files get format-aware mutations about half the time.
    const bool json_step = file.json && rng.chance(55);
    if (json_step) {
      switch (rng.below(5)) {
        case 0:
        case 1: {
          const auto numbers = number_tokens(data);
          if (numbers.empty()) break;
          const auto [at, len] = numbers[rng.below(numbers.size())];
          const std::string_view value = kExtremeNumbers[rng.below(kExtremeNumbers.size())];
          data.replace(at, len, value);
          log.push_back("number=" + std::string(value));
          break;
        }
        case 2: {
          const auto strings = string_tokens(data);
          if (strings.empty()) break;
          const auto [begin, end] = strings[rng.below(strings.size())];
          std::string value;
          switch (rng.below(5)) {
            case 0: value = ""; break;
            case 1: value = std::string(1 + rng.below(4096), 'A'); break;
            case 2: value = "\\u0000\\ud800\\\\\\\""; break;
            case 3: value = "two\\nlines\\r\\t"; break;  // escapes that decode to control characters
            default: value = dictionary.empty() ? "x" : dictionary[rng.below(dictionary.size())]; break;
          }
          data.replace(begin, end - begin, value);
          log.push_back("string");
          break;
        }
        case 3: {
          if (nested) break;
          nested = true;
          const size_t depth = rng.chance(70) ? kDeepNestMin + rng.below(kDeepNestSpan) : 100 + rng.below(60);
          // After a ':' or '[' or ',' the nest is a value; anywhere else it is garbage (also worth a try).
          std::vector<size_t> slots;
          for (size_t i = 0; i < data.size(); ++i) {
            if (data[i] == ':' || data[i] == '[' || data[i] == ',') slots.push_back(i + 1);
          }
          const std::string nest = deep_nest(rng, depth);
          if (!slots.empty() && rng.chance(80)) {
            const size_t at = slots[rng.below(slots.size())];
            // Replace the value that was there up to the next delimiter, keeping the document's shape.
            size_t end = at;
            while (end < data.size() && data[end] != ',' && data[end] != '}' && data[end] != ']') ++end;
            if (data.compare(at, 1, "{") == 0 || data.compare(at, 1, "[") == 0) end = at;
            data.replace(at, end - at, nest + (end == at ? "," : ""));
          } else if (rng.chance(50)) {
            data = nest;  // the whole document
          } else {
            data.insert(rng.below(data.size() + 1), nest);
          }
          log.push_back("nest=" + std::to_string(depth));
          break;
        }
        default: {
          if (dictionary.empty()) break;
          const std::string& word = dictionary[rng.below(dictionary.size())];
          data.insert(position(rng, data.size(), file.hot), "\"" + word + "\"");
          log.push_back("dict");
          break;
        }
      }
      continue;
    }
    switch (rng.below(9)) {
      case 0: {
        if (data.empty()) break;
        const size_t at = position(rng, data.size() - 1, file.hot);
        data[at] = static_cast<char>(data[at] ^ (1u << rng.below(8)));
        log.push_back("flip");
        break;
      }
      case 1: {
        if (data.empty()) break;
        const size_t at = position(rng, data.size() - 1, file.hot);
        data[at] = static_cast<char>(kInterestingBytes[rng.below(kInterestingBytes.size())]);
        log.push_back("byte");
        break;
      }
      case 2: {
        std::string bytes(1 + rng.below(16), '\0');
        for (char& c : bytes) c = static_cast<char>(rng.next());
        data.insert(position(rng, data.size(), file.hot), bytes);
        log.push_back("insert");
        break;
      }
      case 3: {
        if (data.empty()) break;
        const size_t at = position(rng, data.size() - 1, file.hot);
        const size_t len = 1 + rng.below(std::min<size_t>(64, data.size() - at));
        data.erase(at, len);
        log.push_back("delete");
        break;
      }
      case 4: {
        if (data.empty()) break;
        const size_t from = rng.below(data.size());
        const size_t len = 1 + rng.below(std::min<size_t>(256, data.size() - from));
        const std::string chunk = data.substr(from, len);
        data.insert(position(rng, data.size(), file.hot), chunk);
        log.push_back("dup");
        break;
      }
      case 5: {
        if (others.empty()) break;
        const std::string& other = *others[rng.below(others.size())];
        if (other.empty()) break;
        const size_t from = rng.below(other.size());
        const size_t len = 1 + rng.below(std::min<size_t>(4096, other.size() - from));
        const size_t at = position(rng, data.size(), file.hot);
        data = data.substr(0, at) + other.substr(from, len) + (rng.chance(50) ? data.substr(at) : "");
        log.push_back("splice");
        break;
      }
      case 6: {
        data.resize(position(rng, data.size(), file.hot));
        log.push_back("truncate");
        break;
      }
      case 7: {
        if (data.size() < 8) break;
        // Length and offset fields sit at the start of binary formats, or at any 8-byte boundary.
        const size_t at = rng.chance(40) ? 0 : position(rng, data.size() - 8, file.hot) & ~size_t{7};
        const uint64_t v = rng.chance(20) ? data.size() + rng.below(64) : kExtremeU64[rng.below(kExtremeU64.size())];
        put_u64(data, at, v);
        log.push_back("u64");
        break;
      }
      default: {
        if (data.empty()) break;
        const size_t at = position(rng, data.size() - 1, file.hot);
        const size_t len = std::min<size_t>(1 + rng.below(8), data.size() - at);
        for (size_t i = 0; i < len; ++i) data[at + i] = static_cast<char>(rng.next());
        log.push_back("random");
        break;
      }
    }
  }
  return data;
}

std::vector<std::string> json_dictionary(const std::vector<Seed>& seeds) {
  std::set<std::string> words;
  for (const auto& seed : seeds) {
    for (const auto& file : seed.files) {
      if (!file.json || file.bytes.size() > (1u << 20)) continue;
      for (const auto& [begin, end] : string_tokens(file.bytes)) {
        if (end - begin <= 64) words.insert(file.bytes.substr(begin, end - begin));
        if (words.size() > 4000) break;
      }
    }
  }
  return {words.begin(), words.end()};
}

std::filesystem::path seed_root() {
  return std::filesystem::path(RANKSCOPE_BINARY_DIR) / "fuzz-work" / ("seeds." + std::to_string(::getpid()));
}

std::filesystem::path seed_scratch(const std::string& name) {
  const std::filesystem::path dir = seed_root() / name;
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  std::filesystem::create_directories(dir);
  return dir;
}

SeedFile seed_file(const std::string& path, std::string bytes, bool is_json, size_t hot) {
  SeedFile f;
  f.path = path;
  f.bytes = std::move(bytes);
  f.json = is_json;
  f.hot = hot;
  return f;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void write_file(const std::filesystem::path& path, const std::string& bytes) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  // Never through a link: case directories hold links to the real files in ../shared, which a
  // write must not reach (O_EXCL after removing whatever is there; O_NOFOLLOW for good measure).
  std::error_code ec;
  std::filesystem::remove(path, ec);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("rankscope_fuzz: cannot create " + path.string() + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      throw std::runtime_error("rankscope_fuzz: cannot write " + path.string());
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

std::string head_lines(const std::filesystem::path& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::string out, line;
  for (size_t i = 0; i < n && std::getline(in, line); ++i) out += line + "\n";
  return out;
}

}  // namespace rankscope::fuzz
