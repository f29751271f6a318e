// Hash tri-plane encoding, forward and backward, on the GPU.
//
// The maths is the one of the torch reference, avatar/model/hash_triplane.py `encode_planes_torch`, operation
// by operation (tiny-cuda-nn's grid conventions): sample position u * scale + 0.5, cell = floor, bilinear weights
// in corner order (0,0) (1,0) (0,1) (1,1), dense index x + y * res on levels whose res^2 fits in the table, hash
// x ^ (y * 2654435761) (uint32) above, both modulo the level's table size. Explicit round-to-nearest intrinsics
// keep the compiler from fusing multiply-adds, so the forward pass rounds exactly as the torch reference does.
//
// One thread handles one (point, plane, level); blockIdx.y is the plane-level pair, so a block reads a single
// level's table, which stays in cache while many points read it. The backward pass scatters into the tables
// with atomicAdd and, when asked, into the gradient of the box coordinates.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "hash_triplane.h"

namespace {

constexpr uint32_t kPrimeY = 2654435761u;
constexpr int kThreads = 256;

// Axes (of the 3 box coordinates) read by planes xy, xz, yz.
__constant__ int kPlaneAxisA[3] = {0, 0, 1};
__constant__ int kPlaneAxisB[3] = {1, 2, 2};

struct Levels {  // passed by value: a few hundred bytes of kernel arguments
    float scale[kMaxLevels];
    uint32_t resolution[kMaxLevels];
    uint32_t table_size[kMaxLevels];
    uint32_t offset[kMaxLevels];
    int num_levels;
};

template <typename T> __device__ __forceinline__ T mul_rn(T a, T b);
template <typename T> __device__ __forceinline__ T add_rn(T a, T b);
template <> __device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
template <> __device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
template <> __device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
template <> __device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

template <typename T>
struct Cell {
    uint32_t index[4];  // table rows of the corners (0,0) (1,0) (0,1) (1,1), level offset included
    T fx, fy;           // position inside the cell, 0..1
};

template <typename T>
__device__ __forceinline__ Cell<T> locate(T u, T v, const Levels& levels, int level) {
    const T scale = static_cast<T>(levels.scale[level]);
    const T pos_x = add_rn(mul_rn(u, scale), T(0.5));
    const T pos_y = add_rn(mul_rn(v, scale), T(0.5));
    const T cell_x = floor(pos_x), cell_y = floor(pos_y);
    Cell<T> cell;
    cell.fx = pos_x - cell_x;
    cell.fy = pos_y - cell_y;
    const uint32_t x0 = static_cast<uint32_t>(cell_x), y0 = static_cast<uint32_t>(cell_y);
    const uint32_t x1 = x0 + 1, y1 = y0 + 1;
    const uint32_t res = levels.resolution[level], size = levels.table_size[level], offset = levels.offset[level];
    if (static_cast<uint64_t>(res) * res <= size) {
        cell.index[0] = x0 + y0 * res;
        cell.index[1] = x1 + y0 * res;
        cell.index[2] = x0 + y1 * res;
        cell.index[3] = x1 + y1 * res;
    } else {
        const uint32_t hy0 = y0 * kPrimeY, hy1 = y1 * kPrimeY;
        cell.index[0] = x0 ^ hy0;
        cell.index[1] = x1 ^ hy0;
        cell.index[2] = x0 ^ hy1;
        cell.index[3] = x1 ^ hy1;
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) cell.index[c] = cell.index[c] % size + offset;
    return cell;
}

template <typename T>
__device__ __forceinline__ void corner_weights(T fx, T fy, T w[4]) {
    const T gx = T(1) - fx, gy = T(1) - fy;
    w[0] = mul_rn(gx, gy);
    w[1] = mul_rn(fx, gy);
    w[2] = mul_rn(gx, fy);
    w[3] = mul_rn(fx, fy);
}

template <typename T, int F>
__global__ void encode_forward_kernel(const T* __restrict__ coords,  // [N, 3]
                                      const T* __restrict__ tables,  // [3, E, F]
                                      T* __restrict__ out,           // [N, 3 * L * F]
                                      int64_t num_points, int64_t entries_per_plane, Levels levels) {
    const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= num_points) return;
    const int plane = blockIdx.y / levels.num_levels, level = blockIdx.y % levels.num_levels;
    const Cell<T> cell = locate(coords[n * 3 + kPlaneAxisA[plane]], coords[n * 3 + kPlaneAxisB[plane]], levels, level);
    T w[4];
    corner_weights(cell.fx, cell.fy, w);
    const T* table = tables + plane * entries_per_plane * F;
    T acc[F];
#pragma unroll
    for (int f = 0; f < F; ++f) acc[f] = T(0);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        const T* entry = table + static_cast<int64_t>(cell.index[c]) * F;
#pragma unroll
        for (int f = 0; f < F; ++f) acc[f] = add_rn(acc[f], mul_rn(entry[f], w[c]));
    }
    T* dst = out + n * (3 * levels.num_levels * F) + blockIdx.y * F;
#pragma unroll
    for (int f = 0; f < F; ++f) dst[f] = acc[f];
}

template <typename T, int F>
__global__ void encode_backward_kernel(const T* __restrict__ grad_out,  // [N, 3 * L * F]
                                       const T* __restrict__ coords,    // [N, 3]
                                       const T* __restrict__ tables,    // [3, E, F]
                                       T* __restrict__ grad_tables,     // [3, E, F], accumulated
                                       T* __restrict__ grad_coords,     // [N, 3] accumulated, or nullptr
                                       int64_t num_points, int64_t entries_per_plane, Levels levels) {
    const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (n >= num_points) return;
    const int plane = blockIdx.y / levels.num_levels, level = blockIdx.y % levels.num_levels;
    const int axis_a = kPlaneAxisA[plane], axis_b = kPlaneAxisB[plane];
    const Cell<T> cell = locate(coords[n * 3 + axis_a], coords[n * 3 + axis_b], levels, level);
    T w[4];
    corner_weights(cell.fx, cell.fy, w);
    const T* g = grad_out + n * (3 * levels.num_levels * F) + blockIdx.y * F;
    T grad[F];
#pragma unroll
    for (int f = 0; f < F; ++f) grad[f] = g[f];
    const int64_t plane_start = plane * entries_per_plane * F;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        T* entry = grad_tables + plane_start + static_cast<int64_t>(cell.index[c]) * F;
#pragma unroll
        for (int f = 0; f < F; ++f) atomicAdd(entry + f, grad[f] * w[c]);
    }
    if (grad_coords == nullptr) return;
    // d features / d (fx, fy) of the bilinear patch, contracted with the incoming gradient
    const T* table = tables + plane_start;
    T d_fx = T(0), d_fy = T(0);
    const T gx = T(1) - cell.fx, gy = T(1) - cell.fy;
#pragma unroll
    for (int f = 0; f < F; ++f) {
        const T v00 = table[static_cast<int64_t>(cell.index[0]) * F + f];
        const T v10 = table[static_cast<int64_t>(cell.index[1]) * F + f];
        const T v01 = table[static_cast<int64_t>(cell.index[2]) * F + f];
        const T v11 = table[static_cast<int64_t>(cell.index[3]) * F + f];
        d_fx += grad[f] * (gy * (v10 - v00) + cell.fy * (v11 - v01));
        d_fy += grad[f] * (gx * (v01 - v00) + cell.fx * (v11 - v10));
    }
    const T scale = static_cast<T>(levels.scale[level]);  // d pos / d u
    atomicAdd(grad_coords + n * 3 + axis_a, d_fx * scale);
    atomicAdd(grad_coords + n * 3 + axis_b, d_fy * scale);
}

Levels make_levels(const std::vector<double>& scales, const std::vector<int64_t>& resolutions,
                   const std::vector<int64_t>& table_sizes, const std::vector<int64_t>& offsets) {
    const int num_levels = static_cast<int>(scales.size());
    TORCH_CHECK(num_levels >= 1 && num_levels <= kMaxLevels, "hash tri-plane: 1..", kMaxLevels, " levels supported, got ",
                num_levels);
    TORCH_CHECK(resolutions.size() == scales.size() && table_sizes.size() == scales.size() &&
                    offsets.size() >= scales.size(),
                "hash tri-plane: per-level lists differ in length");
    Levels levels{};
    levels.num_levels = num_levels;
    for (int l = 0; l < num_levels; ++l) {
        TORCH_CHECK(table_sizes[l] > 0 && table_sizes[l] <= UINT32_MAX && offsets[l] + table_sizes[l] <= UINT32_MAX,
                    "hash tri-plane: table too large for 32-bit indices");
        levels.scale[l] = static_cast<float>(scales[l]);
        levels.resolution[l] = static_cast<uint32_t>(resolutions[l]);
        levels.table_size[l] = static_cast<uint32_t>(table_sizes[l]);
        levels.offset[l] = static_cast<uint32_t>(offsets[l]);
    }
    return levels;
}

void check_inputs(const at::Tensor& coords, const at::Tensor& tables) {
    TORCH_CHECK(coords.is_cuda() && tables.is_cuda(), "hash tri-plane: coords and tables must be CUDA tensors");
    TORCH_CHECK(coords.device() == tables.device(), "hash tri-plane: coords and tables on different devices");
    TORCH_CHECK(coords.dim() == 2 && coords.size(1) == 3, "hash tri-plane: coords must be [N, 3]");
    TORCH_CHECK(tables.dim() == 3 && tables.size(0) == 3, "hash tri-plane: tables must be [3, E, F]");
    TORCH_CHECK(coords.scalar_type() == tables.scalar_type(), "hash tri-plane: coords and tables dtypes differ");
    TORCH_CHECK(coords.is_contiguous() && tables.is_contiguous(), "hash tri-plane: inputs must be contiguous");
}

// Calls `body.template operator()<F>()` with the feature count as a compile-time constant.
template <typename Body>
void dispatch_features(int64_t num_features, Body&& body) {
    switch (num_features) {
        case 1: body(std::integral_constant<int, 1>{}); break;
        case 2: body(std::integral_constant<int, 2>{}); break;
        case 4: body(std::integral_constant<int, 4>{}); break;
        case 8: body(std::integral_constant<int, 8>{}); break;
        default: TORCH_CHECK(false, "hash tri-plane CUDA kernel: features_per_level must be 1, 2, 4 or 8, got ",
                             num_features);
    }
}

}  // namespace

at::Tensor hash_triplane_forward(const at::Tensor& coords, const at::Tensor& tables, const std::vector<double>& scales,
                                 const std::vector<int64_t>& resolutions, const std::vector<int64_t>& table_sizes,
                                 const std::vector<int64_t>& offsets) {
    check_inputs(coords, tables);
    const Levels levels = make_levels(scales, resolutions, table_sizes, offsets);
    const c10::cuda::CUDAGuard guard(coords.device());
    const int64_t num_points = coords.size(0), num_features = tables.size(2);
    at::Tensor out = at::empty({num_points, 3 * levels.num_levels * num_features}, coords.options());
    if (num_points == 0) return out;
    const dim3 blocks((num_points + kThreads - 1) / kThreads, 3 * levels.num_levels);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(coords.scalar_type(), "hash_triplane_forward", [&] {
        dispatch_features(num_features, [&](auto f) {
            encode_forward_kernel<scalar_t, decltype(f)::value><<<blocks, kThreads, 0, stream>>>(
                coords.data_ptr<scalar_t>(), tables.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), num_points,
                tables.size(1), levels);
        });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}

std::vector<at::Tensor> hash_triplane_backward(const at::Tensor& grad_out, const at::Tensor& coords,
                                               const at::Tensor& tables, const std::vector<double>& scales,
                                               const std::vector<int64_t>& resolutions,
                                               const std::vector<int64_t>& table_sizes,
                                               const std::vector<int64_t>& offsets, bool need_coords_grad) {
    check_inputs(coords, tables);
    const Levels levels = make_levels(scales, resolutions, table_sizes, offsets);
    const c10::cuda::CUDAGuard guard(coords.device());
    const int64_t num_points = coords.size(0), num_features = tables.size(2);
    TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == coords.scalar_type() &&
                    grad_out.size(0) == num_points && grad_out.size(1) == 3 * levels.num_levels * num_features,
                "hash tri-plane: grad_out must be a contiguous [N, 3 * L * F] tensor of the coords' dtype");
    at::Tensor grad_tables = at::zeros_like(tables);
    at::Tensor grad_coords = need_coords_grad ? at::zeros_like(coords) : at::Tensor();
    if (num_points == 0) return {grad_tables, grad_coords};
    const dim3 blocks((num_points + kThreads - 1) / kThreads, 3 * levels.num_levels);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(coords.scalar_type(), "hash_triplane_backward", [&] {
        dispatch_features(num_features, [&](auto f) {
            encode_backward_kernel<scalar_t, decltype(f)::value><<<blocks, kThreads, 0, stream>>>(
                grad_out.data_ptr<scalar_t>(), coords.data_ptr<scalar_t>(), tables.data_ptr<scalar_t>(),
                grad_tables.data_ptr<scalar_t>(), need_coords_grad ? grad_coords.data_ptr<scalar_t>() : nullptr,
                num_points, tables.size(1), levels);
        });
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {grad_tables, grad_coords};
}
