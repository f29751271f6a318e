// Host entry points of the hash tri-plane CUDA kernels (see hash_triplane.cu for the maths).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

constexpr int kMaxLevels = 32;  // per-level constants travel as kernel arguments

// coords: [N, 3] box coordinates in 0..1; tables: [3, E, F] -> [N, 3 * L * F] (planes xy | xz | yz, level-major).
at::Tensor hash_triplane_forward(const at::Tensor& coords, const at::Tensor& tables, const std::vector<double>& scales,
                                 const std::vector<int64_t>& resolutions, const std::vector<int64_t>& table_sizes,
                                 const std::vector<int64_t>& offsets);

// -> {grad_tables [3, E, F], grad_coords [N, 3] (undefined unless need_coords_grad)}
std::vector<at::Tensor> hash_triplane_backward(const at::Tensor& grad_out, const at::Tensor& coords,
                                               const at::Tensor& tables, const std::vector<double>& scales,
                                               const std::vector<int64_t>& resolutions,
                                               const std::vector<int64_t>& table_sizes,
                                               const std::vector<int64_t>& offsets, bool need_coords_grad);
