import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

# i-k-j loop order: the inner loop walks B and C rows contiguously, so -O3 vectorizes it; rows of C split over OpenMP.
cpp_source = r"""
torch::Tensor matmul_ikj(torch::Tensor a, torch::Tensor b) {
    TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "expected A [M, K] and B [K, N]");
    auto ac = a.contiguous();
    auto bc = b.contiguous();
    const int64_t M = ac.size(0), K = ac.size(1), N = bc.size(1);
    auto c = torch::zeros({M, N}, ac.options());
    const float* A = ac.data_ptr<float>();
    const float* B = bc.data_ptr<float>();
    float* C = c.data_ptr<float>();
    #pragma omp parallel for
    for (int64_t i = 0; i < M; ++i) {
        float* ci = C + i * N;
        for (int64_t k = 0; k < K; ++k) {
            const float aik = A[i * K + k];
            const float* bk = B + k * N;
            for (int64_t j = 0; j < N; ++j) ci[j] += aik * bk[j];
        }
    }
    return c;
}
"""

ext = load_inline(name="builtin_matmul_cpu", cpp_sources=cpp_source, functions=["matmul_ikj"],
                  extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        return ext.matmul_ikj(A, B)
