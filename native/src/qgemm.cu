// Quantized matrix products straight from GPTQ's packed tensors (qtool.format.gptq.GptqLayout is the layout):
// qt_gptq_gemv for a few rows (decoding), qt_gptq_dequant for the fp16 weight that a cuBLAS product then takes
// (prefill, ExLlamaV2's approach for batches of 8 and more).
//
// Work unit: 32 consecutive inputs of 4 consecutive outputs. Whatever the width, 32 inputs of one output are `bits`
// whole words of qweight (a 3-bit line is 32 inputs per 3 words), so a unit is `bits` rows of qweight, each read as one
// 128-bit load of 4 adjacent outputs; with the width a template parameter every field's word and shift are constants.
//
// Bytes per token (batch 1), the GEMV's memory traffic: in·out·bits/8 of qweight, read exactly once, plus per group
// out·2 (scales) + out·bits/8 (qzeros), plus in·2 of x and out·4 (or ·2) of y. For 4096×11008 at 4 bits, group 128:
// 22.5 MB of qweight + 0.70 MB scales + 0.17 MB zeros + 0.02 MB x + 0.04 MB y ≈ 23.5 MB, so at ~3 TB/s of HBM the
// floor is ~8 µs. Scales and zeros are re-read by the 4 lanes of a unit row but come from L1/L2, not DRAM.
#include <cuda_fp16.h>

#include "internal.h"

namespace qt {
namespace {

constexpr int kMaxGemvRows = 8;
constexpr int kQuadsPerWarp = 4;                        // lanes 0..3 of a slice: 16 outputs, 64 contiguous bytes a row
constexpr int kSlicesPerWarp = 32 / kQuadsPerWarp;      // 8 input slices per warp, summed by shuffles
constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kOutputsPerBlock = 4 * kQuadsPerWarp;     // 16
constexpr int kSlicesPerBlock = kSlicesPerWarp * kWarps;  // 64

// Field `index` of a little-endian bit stream of `bits`-bit fields held in words line[0], line[1], ...
__device__ __forceinline__ int packed_field(const uint32_t* __restrict__ line, int index, int bits) {
    const int bit = index * bits, word = bit >> 5, shift = bit & 31;
    uint32_t v = __ldg(line + word) >> shift;
    if (shift + bits > 32) v |= __ldg(line + word + 1) << (32 - shift);
    return static_cast<int>(v & ((1u << bits) - 1));
}

// Code of input j (0..31) of the unit from its `Bits` words (one per qweight row, this output's column).
template <int Bits>
__device__ __forceinline__ int unit_code(const uint32_t (&w)[Bits], int j) {
    const int bit = j * Bits, word = bit >> 5, shift = bit & 31;  // constants once j is unrolled
    uint32_t v = w[word] >> shift;
    if (shift + Bits > 32) v |= w[word + 1] << (32 - shift);
    return static_cast<int>(v & ((1u << Bits) - 1));
}

// The `Bits` qweight rows of unit u for outputs o..o+3: w[k][c] is row u·Bits + k, column o + c.
template <int Bits>
__device__ __forceinline__ void load_unit(uint32_t (&w)[4][Bits], const uint32_t* __restrict__ qweight, int out, int u,
                                          int o) {
    uint4 v[Bits];
#pragma unroll
    for (int k = 0; k < Bits; k++)
        v[k] = __ldg(reinterpret_cast<const uint4*>(qweight + static_cast<size_t>(u * Bits + k) * out + o));
#pragma unroll
    for (int k = 0; k < Bits; k++) {
        w[0][k] = v[k].x;
        w[1][k] = v[k].y;
        w[2][k] = v[k].z;
        w[3][k] = v[k].w;
    }
}

struct GroupParams {
    const uint32_t* qzeros;  // [groups, out·bits/32]
    const __half* scales;    // [groups, out]
    int out, bits, zero_offset;

    __device__ __forceinline__ float scale(int g, int o) const { return __half2float(scales[static_cast<size_t>(g) * out + o]); }
    __device__ __forceinline__ float zero(int g, int o) const {
        return static_cast<float>(packed_field(qzeros + static_cast<size_t>(g) * (out * bits / 32), o, bits) + zero_offset);
    }
};

// y[r, o] = sum_i x[r, i] · s[g(i), o] · (q[i, o] − z[g(i), o]). Block: 16 outputs × 64 input slices; a thread takes
// units u = slice, slice + 64, ... of its output quad. PerInput: groups from g_idx per input (act-order); otherwise
// one group per unit (g = 32u / group_size), so the sum factors as s · (Σ q·x − z · Σ x).
template <int Bits, bool PerInput, typename Out>
__global__ void __launch_bounds__(kThreads) gptq_gemv(Out* __restrict__ y, const __half* __restrict__ x,
                                                      const uint32_t* __restrict__ qweight, GroupParams gp,
                                                      const int* __restrict__ g_idx, int group_size, int rows, int in) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int quad = lane % kQuadsPerWarp, slice = warp * kSlicesPerWarp + lane / kQuadsPerWarp;
    const int out = gp.out, o = blockIdx.x * kOutputsPerBlock + quad * 4;
    const bool active = o < out;
    const int units = in / 32;

    float acc[kMaxGemvRows][4];
#pragma unroll
    for (int r = 0; r < kMaxGemvRows; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) acc[r][c] = 0.0f;

    for (int u = slice; active && u < units; u += kSlicesPerBlock) {
        uint32_t w[4][Bits];
        load_unit<Bits>(w, qweight, out, u, o);
        float s[4], z[4];
        if (!PerInput) {
            const int g = group_size > 0 ? u * 32 / group_size : 0;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                s[c] = gp.scale(g, o + c);
                z[c] = gp.zero(g, o + c);
            }
        }
#pragma unroll
        for (int r = 0; r < kMaxGemvRows; r++) {
            if (r >= rows) break;
            const uint4* xr = reinterpret_cast<const uint4*>(x + static_cast<size_t>(r) * in + u * 32);
            float dot[4] = {0.0f, 0.0f, 0.0f, 0.0f}, xsum = 0.0f;
#pragma unroll
            for (int part = 0; part < 4; part++) {  // 8 halves of x per 128-bit load
                const uint4 xv = __ldg(xr + part);
                const __half2* h2 = reinterpret_cast<const __half2*>(&xv);
#pragma unroll
                for (int p = 0; p < 4; p++) {
                    const float2 xf = __half22float2(h2[p]);
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int j = part * 8 + p * 2 + e;
                        const float xj = e == 0 ? xf.x : xf.y;
                        if (PerInput) {
                            const int g = __ldg(g_idx + u * 32 + j);
#pragma unroll
                            for (int c = 0; c < 4; c++)
                                dot[c] = fmaf(xj, gp.scale(g, o + c) * (unit_code<Bits>(w[c], j) - gp.zero(g, o + c)), dot[c]);
                        } else {
                            xsum += xj;
#pragma unroll
                            for (int c = 0; c < 4; c++) dot[c] = fmaf(xj, static_cast<float>(unit_code<Bits>(w[c], j)), dot[c]);
                        }
                    }
                }
            }
#pragma unroll
            for (int c = 0; c < 4; c++) acc[r][c] += PerInput ? dot[c] : s[c] * (dot[c] - z[c] * xsum);
        }
    }

    // Sum the 8 slices of each warp (lanes differing in bits 2..4), then the 8 warps through shared memory.
    __shared__ float partial[kWarps][kMaxGemvRows][kOutputsPerBlock];
#pragma unroll
    for (int r = 0; r < kMaxGemvRows; r++) {
        if (r >= rows) break;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            float v = acc[r][c];
#pragma unroll
            for (int offset = kQuadsPerWarp; offset < 32; offset <<= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
            if (lane < kQuadsPerWarp) partial[warp][r][quad * 4 + c] = v;
        }
    }
    __syncthreads();
    for (int t = threadIdx.x; t < rows * kOutputsPerBlock; t += kThreads) {
        const int r = t / kOutputsPerBlock, col = t % kOutputsPerBlock, oc = blockIdx.x * kOutputsPerBlock + col;
        if (oc >= out) continue;
        float sum = 0.0f;
#pragma unroll
        for (int k = 0; k < kWarps; k++) sum += partial[k][r][col];
        if constexpr (sizeof(Out) == 4) y[static_cast<size_t>(r) * out + oc] = sum;
        else y[static_cast<size_t>(r) * out + oc] = __float2half_rn(sum);
    }
}

// w[o, i] = s[g, o] · (q[i, o] − z[g, o]) in fp16 (product in F32, rounded once). A thread per unit and output quad;
// it writes 32 consecutive halves (four 128-bit stores) in each of its 4 output rows.
template <int Bits>
__global__ void gptq_dequant(__half* __restrict__ w_out, const uint32_t* __restrict__ qweight, GroupParams gp,
                             const int* __restrict__ g_idx, int group_size, int in) {
    const int out = gp.out, quads = out / 4;
    const size_t t = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
    if (t >= static_cast<size_t>(quads) * (in / 32)) return;
    const int o = static_cast<int>(t % quads) * 4, u = static_cast<int>(t / quads);  // adjacent threads: adjacent outputs
    uint32_t w[4][Bits];
    load_unit<Bits>(w, qweight, out, u, o);
#pragma unroll
    for (int c = 0; c < 4; c++) {
        __align__(16) __half row[32];
        int g_prev = -1;
        float s = 0.0f, z = 0.0f;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const int i = u * 32 + j;
            const int g = g_idx != nullptr ? __ldg(g_idx + i) : group_size > 0 ? i / group_size : 0;
            if (g != g_prev) {
                s = gp.scale(g, o + c);
                z = gp.zero(g, o + c);
                g_prev = g;
            }
            row[j] = __float2half_rn(s * (unit_code<Bits>(w[c], j) - z));
        }
        uint4* dst = reinterpret_cast<uint4*>(w_out + static_cast<size_t>(o + c) * in + u * 32);
#pragma unroll
        for (int k = 0; k < 4; k++) dst[k] = reinterpret_cast<const uint4*>(row)[k];
    }
}

// Shared argument checks of both entry points.
int check_packed(const char* fn, const void* qweight, const void* qzeros, const void* scales, int in, int out, int bits,
                 int group_size, int checkpoint_format, const void* g_idx) {
    QT_REQUIRE(qweight && qzeros && scales, "%s: NULL qweight, qzeros or scales", fn);
    QT_REQUIRE(bits == 2 || bits == 3 || bits == 4 || bits == 8, "%s: bits %d (need 2, 3, 4 or 8)", fn, bits);
    QT_REQUIRE(in > 0 && out > 0, "%s: in %d, out %d", fn, in, out);
    QT_REQUIRE(in % 32 == 0 && out % 32 == 0, "%s: in %d and out %d must be multiples of 32", fn, in, out);
    QT_REQUIRE(group_size == -1 || group_size > 0, "%s: group size %d (need -1 or > 0)", fn, group_size);
    QT_REQUIRE(g_idx != nullptr || group_size == -1 || group_size % 32 == 0,
               "%s: group size %d without g_idx must be a multiple of 32 (pass g_idx)", fn, group_size);
    QT_REQUIRE(checkpoint_format == 1 || checkpoint_format == 2, "%s: checkpoint format %d (need 1 or 2)", fn,
               checkpoint_format);
    QT_REQUIRE(aligned16(qweight), "%s: qweight is not 16-byte aligned", fn);
    return QT_OK;
}

template <int Bits, typename Out>
void launch_gemv(Out* y, const __half* x, const uint32_t* qweight, GroupParams gp, const int* g_idx, int group_size,
                 int rows, int in, cudaStream_t s) {
    const unsigned blocks = (gp.out + kOutputsPerBlock - 1) / kOutputsPerBlock;
    if (g_idx != nullptr)
        gptq_gemv<Bits, true, Out><<<blocks, kThreads, 0, s>>>(y, x, qweight, gp, g_idx, group_size, rows, in);
    else
        gptq_gemv<Bits, false, Out><<<blocks, kThreads, 0, s>>>(y, x, qweight, gp, g_idx, group_size, rows, in);
}

template <typename Out>
void launch_gemv_bits(int bits, Out* y, const __half* x, const uint32_t* qweight, GroupParams gp, const int* g_idx,
                      int group_size, int rows, int in, cudaStream_t s) {
    switch (bits) {
        case 2: launch_gemv<2>(y, x, qweight, gp, g_idx, group_size, rows, in, s); break;
        case 3: launch_gemv<3>(y, x, qweight, gp, g_idx, group_size, rows, in, s); break;
        case 4: launch_gemv<4>(y, x, qweight, gp, g_idx, group_size, rows, in, s); break;
        default: launch_gemv<8>(y, x, qweight, gp, g_idx, group_size, rows, in, s); break;
    }
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_gptq_gemv(void* y, int y_dtype, const void* x, const void* qweight, const void* qzeros, const void* scales,
                 const int32_t* g_idx, int rows, int in, int out, int bits, int group_size, int checkpoint_format,
                 void* stream) {
    QT_REQUIRE(rows >= 0 && rows <= kMaxGemvRows, "qt_gptq_gemv: rows %d (need 0..%d)", rows, kMaxGemvRows);
    if (rows == 0) return QT_OK;
    QT_TRY(check_packed("qt_gptq_gemv", qweight, qzeros, scales, in, out, bits, group_size, checkpoint_format, g_idx));
    QT_REQUIRE(y && x, "qt_gptq_gemv: NULL y or x");
    QT_REQUIRE(y_dtype == QT_F32 || y_dtype == QT_F16, "qt_gptq_gemv: y dtype %s (need F32 or F16)", dtype_name(y_dtype));
    QT_REQUIRE(aligned16(x), "qt_gptq_gemv: x is not 16-byte aligned");
    GroupParams gp{static_cast<const uint32_t*>(qzeros), static_cast<const __half*>(scales), out, bits,
                   checkpoint_format == 1 ? 1 : 0};
    const cudaStream_t s = as_stream(stream);
    const auto* xh = static_cast<const __half*>(x);
    const auto* qw = static_cast<const uint32_t*>(qweight);
    if (y_dtype == QT_F32)
        launch_gemv_bits(bits, static_cast<float*>(y), xh, qw, gp, g_idx, group_size, rows, in, s);
    else
        launch_gemv_bits(bits, static_cast<__half*>(y), xh, qw, gp, g_idx, group_size, rows, in, s);
    return check_launch("gptq_gemv");
}

int qt_gptq_dequant(void* weight, const void* qweight, const void* qzeros, const void* scales, const int32_t* g_idx,
                    int in, int out, int bits, int group_size, int checkpoint_format, void* stream) {
    QT_TRY(check_packed("qt_gptq_dequant", qweight, qzeros, scales, in, out, bits, group_size, checkpoint_format, g_idx));
    QT_REQUIRE(weight != nullptr, "qt_gptq_dequant: NULL weight");
    QT_REQUIRE(aligned16(weight), "qt_gptq_dequant: weight is not 16-byte aligned");
    GroupParams gp{static_cast<const uint32_t*>(qzeros), static_cast<const __half*>(scales), out, bits,
                   checkpoint_format == 1 ? 1 : 0};
    const size_t threads = static_cast<size_t>(out / 4) * (in / 32);
    const unsigned blocks = static_cast<unsigned>((threads + 255) / 256);
    const cudaStream_t s = as_stream(stream);
    auto* w = static_cast<__half*>(weight);
    const auto* qw = static_cast<const uint32_t*>(qweight);
    switch (bits) {
        case 2: gptq_dequant<2><<<blocks, 256, 0, s>>>(w, qw, gp, g_idx, group_size, in); break;
        case 3: gptq_dequant<3><<<blocks, 256, 0, s>>>(w, qw, gp, g_idx, group_size, in); break;
        case 4: gptq_dequant<4><<<blocks, 256, 0, s>>>(w, qw, gp, g_idx, group_size, in); break;
        default: gptq_dequant<8><<<blocks, 256, 0, s>>>(w, qw, gp, g_idx, group_size, in); break;
    }
    return check_launch("gptq_dequant");
}

}  // extern "C"
