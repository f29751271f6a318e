// Python binding of the hash tri-plane kernels; built on first use by avatar/model/_cuda_loader.py.
#include <torch/extension.h>

#include "hash_triplane.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "Hash tri-plane encoding (forward, backward) with tiny-cuda-nn grid conventions";
    m.def("forward", &hash_triplane_forward, "encode [N, 3] box coordinates with three 2D hash grids",
          py::arg("coords"), py::arg("tables"), py::arg("scales"), py::arg("resolutions"), py::arg("table_sizes"),
          py::arg("offsets"));
    m.def("backward", &hash_triplane_backward, "gradients of the encoding w.r.t. the tables (and coordinates)",
          py::arg("grad_out"), py::arg("coords"), py::arg("tables"), py::arg("scales"), py::arg("resolutions"),
          py::arg("table_sizes"), py::arg("offsets"), py::arg("need_coords_grad"));
}
