// Device selection: parsing --device and building the backend it names.
#include <charconv>

#include "core/base/error.hpp"
#include "core/compute/backend.hpp"
#include "core/compute/cpu/cpu_backend.hpp"
#ifdef RANKSCOPE_CUDA
#include "core/compute/cuda/cuda_backend.hpp"
#endif

namespace rankscope {

std::string compute_type_name(ComputeType t) {
  switch (t) {
    case ComputeType::f32: return "fp32";
    case ComputeType::bf16: return "bf16";
    case ComputeType::f16: return "fp16";
  }
  return "?";
}

ComputeType parse_compute_type(const std::string& text) {
  if (text == "fp32" || text == "float32" || text == "f32") return ComputeType::f32;
  if (text == "bf16" || text == "bfloat16") return ComputeType::bf16;
  if (text == "fp16" || text == "float16" || text == "f16") return ComputeType::f16;
  fail("unknown dtype '{}' (expected fp32, bf16 or fp16)", text);
}

std::string Device::text() const {
  switch (kind) {
    case Kind::cpu: return "cpu";
    case Kind::automatic: return "auto";
    case Kind::cuda: return index == 0 ? "cuda" : "cuda:" + std::to_string(index);
  }
  return "?";
}

Device parse_device(const std::string& text) {
  if (text == "cpu") return {Device::Kind::cpu, 0};
  if (text == "auto") return {Device::Kind::automatic, 0};
  if (text == "cuda") return {Device::Kind::cuda, 0};
  if (text.starts_with("cuda:")) {
    int index = -1;
    const char* begin = text.data() + 5;
    const char* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(begin, end, index);
    if (ec == std::errc() && ptr == end && begin != end && index >= 0) return {Device::Kind::cuda, index};
  }
  fail("unknown device '{}' (expected cpu, cuda, cuda:N or auto)", text);
}

bool cuda_built() {
#ifdef RANKSCOPE_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef RANKSCOPE_CUDA
  return cuda_visible_devices();
#else
  return 0;
#endif
}

std::shared_ptr<Backend> make_backend(const Device& device, ComputeType type) {
  // The CPU backend is shared and stateless: a non-owning pointer to it.
  const std::shared_ptr<Backend> cpu(std::shared_ptr<Backend>(), &cpu_backend());
  if (device.kind == Device::Kind::cpu) return cpu;
  if (!cuda_built()) {
    if (device.kind == Device::Kind::automatic) return cpu;
    fail("--device {}: this rankscope was built without CUDA (configure with -DRANKSCOPE_CUDA=ON)", device.text());
  }
  const int n = cuda_device_count();
  if (n == 0) {
    if (device.kind == Device::Kind::automatic) return cpu;
    fail("--device {}: no CUDA GPU is visible (CUDA_VISIBLE_DEVICES, driver)", device.text());
  }
  if (device.index >= n) fail("--device {}: only {} CUDA GPU(s) visible", device.text(), n);
#ifdef RANKSCOPE_CUDA
  return make_cuda_backend(device.index, type);
#else
  return cpu;
#endif
}

}  // namespace rankscope
