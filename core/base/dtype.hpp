// Element types of checkpoint tensors. Everything is computed in fp32; F16 and BF16 are widened
// on load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace rankscope {

enum class DType { f32, f16, bf16 };

// The safetensors name ("F32", "F16", "BF16"), or nullopt for any other.
std::optional<DType> dtype_from_safetensors(std::string_view name);
std::string_view dtype_name(DType dtype);
size_t dtype_size(DType dtype);

float f16_to_f32(uint16_t bits);
float bf16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float value);   // round to nearest even
uint16_t f32_to_bf16(float value);  // round to nearest even

// Widens `n` elements at `src` (of `dtype`, little-endian, any alignment) to fp32 at `dst`.
void convert_to_f32(DType dtype, const void* src, size_t n, float* dst);

}  // namespace rankscope
