// Quantized matrix products straight from packed codes, for GPTQ and EXL2 alike (qt_qmatrix in qtool.h is the layout):
// qt_qmatrix_gemv for a few rows (decoding), qt_qmatrix_dequant for the fp16 weight that a cuBLAS product then takes
// (prefill, ExLlamaV2's approach for batches of more than 8 rows).
//
// Work item: one unit (32 processing rows) of 4 adjacent outputs. Whatever the width, a unit of one output is `bits`
// whole words of qweight (a 3-bit unit is 32 codes in 3 words), so a thread reads `bits` qweight rows as one 128-bit
// load each; the width is a template parameter, so every field's word and shift is a constant. A unit has one group,
// so its sum factors as s · (Σ q·x − z · Σ x): the inner loop is one FMA per code and output, and Σ x is shared by the
// 4 outputs. Codes become floats without a conversion instruction (I2F issues at a quarter of the FMA rate, which
// would cap 4-bit batch-1 GEMV below the memory bound): the field is moved into the top bits of a float's mantissa
// under the exponent of 2^bits, which reads as exactly 2^bits + q (one shift, one LOP3); the constant goes with z.
//
// GEMV block: 16 outputs (4 quads) × 8 input slices per warp × 8 warps (QTOOL_QMATRIX_WARPS=4 or 8). A slice takes
// pairs of adjacent units, the block's slices interleaved pair by pair; the 8 slices of a warp are summed by shuffles,
// the warps through shared memory. Batch 1 is software-pipelined two deep (PipelinedWalk): a slice's next unit is in
// flight while the current one is multiplied, and the first two are issued before the block stages x. On a matrix of
// one width (qrows = in / 32 · bits: GPTQ) the buffers hold `bits` words; on a mixed one (EXL2) they hold 8 words,
// the widest unit, the loads are predicated on the unit's width and the product switches on it: one set of buffer
// registers for every width (the earlier attempt, a pipeline per width inside the switch, kept every width's buffers
// live together: 255 registers and spills). Batches of 2..8 rows take a pair at a time through a run-time width
// switch, both units' loads issued before either is used (over 2 rows one unit at a time: their arithmetic per byte
// hides the latency). Every block covers all inputs of its 16 outputs; no split over the inputs (which would need
// atomics into a zeroed F32 y and could not produce F16 y in one pass), because out/16 blocks already fill the machine
// at the shapes that matter:
//   out = 4096: 256 blocks of 256 threads on 132 SMs, ~2 per SM = 512 threads per SM, each with a 4-bit unit in flight
//   while it multiplies another (4 × 16 B = 64 B, 128 B at the start) = 32-64 KB per SM. Little's law at 3.0 TB/s and
//   ~0.8 µs of loaded DRAM latency needs 3.0e12 × 0.8e-6 / 132 ≈ 18 KB per SM; the 2-to-1 block imbalance of 256 blocks
//   on 132 SMs costs 256 / 264 = 3 %. out = 11008: 688 blocks, 3 resident per SM (396) at 80 registers, 1.7 waves.
// ptxas (sm_90, nvcc 13.0), registers: batch 1 one-width 77 / 77 / 78 / 118 / 118 / 120 (2 / 3 / 4 / 5 / 6 / 8 bits; up
// to 4 bits held to 3 blocks per SM by the launch bounds), batch 1 mixed 123 (2 blocks per SM), batch 1 unstaged 128,
// 2 rows 78, 3..4 rows 112, 5..8 rows 221; no spills, no stack.
// x at batch 1 is staged in shared memory by each block (up to 96 KB; gathered through perm there, so an EXL2 matrix
// needs no separate gather launch and no scratch): the 8 slices of a warp read 8 different units' 16 bytes at once,
// swizzled into 8 different bank quads (one wavefront). Larger x, and batches of 2..8 rows (ptxas hoists their shared
// loads of x and spills), read x from global memory through the read-only path (gathered into scratch first with a
// perm); every block reads all of x (22 KB at in = 11008) either way, from L2.
// Prediction, EXL2 at batch 1 (the measurements before this change: 4-bit perm 1x4096->4096 11.5 µs, of which the
// gather launch ~3.1 µs; mix 4096x11008 18.3 µs through Java vs 16.2 µs at one width): the gather costs per block
// in/8 16-byte copies + in/4 perm loads and in random 2-byte shared reads (~4 wavefronts a warp): at in = 4096 ~128
// warp-instructions × 4 ≈ 500 cycles of the LSU ≈ 0.25 µs, hidden under the first two units' loads (primed before),
// against ~3 µs saved per launch (224 per token: ~0.7 ms of 4.9 ms). The mixed walk now matches the one-width walk's
// pipelining (2 blocks per SM at 123 registers instead of 3: still 2 × 256 threads × 2 units × 64 B = 64 KB in flight
// per SM, above the 18 KB Little's law asks): from 37 % of copy toward the one-width 48-50 %. Expected decode:
// 4.9 ms → ~4.0 ms/token (≥ 250 tok/s, 1.3× ExLlamaV2), if the H100 agrees.
//
// Bytes per token (batch 1) = in·out·bits/8 (qweight, read once) + groups·out·2 (scales) + groups·out·2 (zeros, when
// present) + in/32·8 (units) + in·2 (x) + out·4 (y). 4096 → 11008 at 4 bits, group 128: 22.5 MB + 0.70 + 0.70 + 0.001
// + 0.008 + 0.044 ≈ 24.0 MB, so at 3.0 TB/s of HBM the floor is 8.0 µs (85 % of the copy bandwidth: 9.4 µs). Scales and
// zeros are re-read by the 4 units of a 128-row group, from L1/L2. Arithmetic at batch 1: per code and output a shift,
// a LOP3 and an FMA (+ ~0.5 for x's conversion and Σ x, shared by 4 outputs) = 3.5 instructions over 32 lanes:
// 45.1e6 × 3.5 / 32 / (4 issues × 132 SMs × 1.98 GHz) ≈ 4.7 µs, under the memory time.
#include <cuda_fp16.h>

#include <cstdlib>

#include "internal.h"

namespace qt {
namespace {

constexpr int kMaxGemvRows = 8;
constexpr int kQuadsPerWarp = 4;                     // lanes 0..3 of a slice: 16 outputs, 64 contiguous bytes a row
constexpr int kSlicesPerWarp = 32 / kQuadsPerWarp;   // 8 input slices per warp, summed by shuffles
constexpr int kOutputsPerBlock = 4 * kQuadsPerWarp;  // 16
constexpr int kDefaultWarps = 8;
constexpr int kMaxThreads = 256;
constexpr size_t kMaxStagedBytes = 96 * 1024;  // x staged in shared memory up to this (opt-in above 48 KB)

// Warps per GEMV block: QTOOL_QMATRIX_WARPS (4 or 8) overrides kDefaultWarps, for measurements.
int gemv_warps() {
    static const int warps = [] {
        const char* e = getenv("QTOOL_QMATRIX_WARPS");
        const int v = e != nullptr ? atoi(e) : 0;
        return v == 4 || v == 8 ? v : kDefaultWarps;
    }();
    return warps;
}

// 2^Bits + (field j of the unit's little-endian stream of `Bits`-bit fields in w[0..Bits-1]), as an exact float: the
// field fills the top `Bits` bits of the mantissa (from bit 23 − Bits) under the exponent of 2^Bits. w may hold more
// words than the width needs (the mixed-width walk's buffers are 8 words, the widest unit).
template <int Bits, int Words>
__device__ __forceinline__ float code_plus_base(const uint32_t (&w)[Words], int j) {
    static_assert(Bits <= Words, "a unit's codes are Bits words");
    constexpr int kTop = 23 - Bits;
    const int bit = j * Bits, word = bit >> 5, shift = bit & 31;  // constants once j is unrolled
    uint32_t v;
    if (shift + Bits > 32) v = __funnelshift_r(w[word], w[word + 1], shift - kTop);  // straddles two words
    else if (shift >= kTop) v = w[word] >> (shift - kTop);
    else v = w[word] << (kTop - shift);
    return __uint_as_float((v & (((1u << Bits) - 1) << kTop)) | ((127u + Bits) << 23));
}

// The first `bits` (≤ Words) qweight rows of one unit for outputs o..o+3 (line = qweight + first row · out + o):
// w[c][k] is row k, column o + c; rows from `bits` on are not read and hold zeros. With bits a constant (one-width
// kernels) the predicates fold away; otherwise they are per-load predicates, no branch.
template <int Words>
__device__ __forceinline__ void load_codes(uint32_t (&w)[4][Words], const uint32_t* __restrict__ line, int out,
                                           int bits) {
    uint4 v[Words];
#pragma unroll
    for (int k = 0; k < Words; k++)
        v[k] = k < bits ? __ldg(reinterpret_cast<const uint4*>(line + static_cast<size_t>(k) * out))
                        : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int k = 0; k < Words; k++) {
        w[0][k] = v[k].x;
        w[1][k] = v[k].y;
        w[2][k] = v[k].z;
        w[3][k] = v[k].w;
    }
}

// Four adjacent halves (8-byte aligned) as floats.
__device__ __forceinline__ void load_half4(float (&v)[4], const __half* __restrict__ p) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
}

struct QMatrix {
    const uint32_t* qweight;
    const int2* units;  // {first qweight row, group << 8 | bits}
    const __half* scales;
    const __half* zeros;  // or nullptr: z = 2^(bits - 1)
    int in, out;
};

// Scale s and zero + 2^bits (the base code_plus_base adds) of group g for outputs o..o+3.
__device__ __forceinline__ void load_group(float (&s)[4], float (&zb)[4], const QMatrix& m, int g, int o, int bits) {
    const size_t at = static_cast<size_t>(g) * m.out + o;
    const float base = __uint_as_float((127u + bits) << 23);  // 2^bits, exactly
    load_half4(s, m.scales + at);
    if (m.zeros != nullptr) {
        load_half4(zb, m.zeros + at);
#pragma unroll
        for (int c = 0; c < 4; c++) zb[c] += base;
    } else {
#pragma unroll
        for (int c = 0; c < 4; c++) zb[c] = 1.5f * base;  // 2^bits + 2^(bits - 1)
    }
}

// One unit of outputs o..o+3 as loaded: its codes (Words ≥ its width), its group's scales and zeros + 2^bits.
template <int Words>
struct LoadedUnit {
    uint32_t w[4][Words];
    float s[4], zb[4];
    int bits;
};

// Loads unit d (descriptor) for outputs o..o+3; Bits is its width, or 0: read from d (up to Words).
template <int Bits, int Words>
__device__ __forceinline__ void load_unit(LoadedUnit<Words>& lu, const QMatrix& m, int2 d, int o) {
    lu.bits = Bits != 0 ? Bits : d.y & 0xff;
    load_codes<Words>(lu.w, m.qweight + static_cast<size_t>(d.x) * m.out + o, m.out, lu.bits);
    load_group(lu.s, lu.zb, m, d.y >> 8, o, lu.bits);
}

// Position of 16-byte chunk c of a staged row of x: the chunks of each aligned 8 permuted by the 8 above. The 8 slices
// of a warp read the same part of units 2 apart (chunks 8 apart) at once: swizzled, their 8 chunks fall in 8 different
// bank quads, one wavefront per 128-bit load instead of 8.
__host__ __device__ constexpr int swizzled(int c) { return c ^ ((c >> 3) & 7); }
// Chunks per staged row: in / 8 rounded up to a multiple of 8, so that swizzled(c) stays inside the row.
__host__ __device__ constexpr int staged_stride(int in) { return (in / 8 + 7) & ~7; }

// x in processing order as the products read it, 16-byte chunk c (8 halves) of row r: staged in shared memory
// (chunks[r · stride + swizzled(c)]) or in global memory (chunks[r · in / 8 + c], through the read-only path).
template <bool Staged>
struct XView {
    const uint4* chunks;
    int stride;
    __device__ __forceinline__ uint4 chunk(int r, int c) const {
        if constexpr (Staged) return chunks[r * stride + swizzled(c)];
        else return __ldg(chunks + static_cast<size_t>(r) * stride + c);
    }
};

// acc[r][c] += Σ_j x[r, 32u + j] · s · (q_j − z) for the loaded unit u, `Bits` wide. x rows ≥ rows read as zeros.
template <int Bits, int Rows, int Words, class X>
__device__ __forceinline__ void unit_product(float (&acc)[Rows][4], const LoadedUnit<Words>& lu, const X& x, int rows,
                                             int u) {
    float dot[Rows][4], xsum[Rows];
#pragma unroll
    for (int r = 0; r < Rows; r++) {
        xsum[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < 4; c++) dot[r][c] = 0.0f;
    }
#pragma unroll
    for (int part = 0; part < 4; part++) {  // 8 halves of x per 128-bit load
        uint4 xv[Rows];
#pragma unroll
        for (int r = 0; r < Rows; r++) xv[r] = Rows == 1 || r < rows ? x.chunk(r, 4 * u + part) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int p = 0; p < 4; p++) {
            float2 xf[Rows];
#pragma unroll
            for (int r = 0; r < Rows; r++) xf[r] = __half22float2(reinterpret_cast<const __half2*>(&xv[r])[p]);
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int j = part * 8 + p * 2 + e;
                float q[4];
#pragma unroll
                for (int c = 0; c < 4; c++) q[c] = code_plus_base<Bits>(lu.w[c], j);
#pragma unroll
                for (int r = 0; r < Rows; r++) {
                    const float xj = e == 0 ? xf[r].x : xf[r].y;
                    xsum[r] += xj;
#pragma unroll
                    for (int c = 0; c < 4; c++) dot[r][c] = fmaf(q[c], xj, dot[r][c]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < Rows; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) acc[r][c] = fmaf(lu.s[c], fmaf(-lu.zb[c], xsum[r], dot[r][c]), acc[r][c]);
}

// unit_product for the loaded unit's own width: Bits, or when Bits is 0 the width it was loaded with (a warp's slices
// mostly share one, so the switch rarely diverges).
template <int Bits, int Rows, int Words, class X>
__device__ __forceinline__ void unit_product_of_width(float (&acc)[Rows][4], const LoadedUnit<Words>& lu, const X& x,
                                                      int rows, int u) {
    if constexpr (Bits != 0) {
        unit_product<Bits, Rows>(acc, lu, x, rows, u);
    } else {
        switch (lu.bits) {
            case 2: unit_product<2, Rows>(acc, lu, x, rows, u); break;
            case 3: unit_product<3, Rows>(acc, lu, x, rows, u); break;
            case 4: unit_product<4, Rows>(acc, lu, x, rows, u); break;
            case 5: unit_product<5, Rows>(acc, lu, x, rows, u); break;
            case 6: unit_product<6, Rows>(acc, lu, x, rows, u); break;
            default: unit_product<8, Rows>(acc, lu, x, rows, u); break;
        }
    }
}

// The N units u[n] (descriptors d[n], all `Bits` wide): every load issued, then the products.
template <int Bits, int Rows, int N, class X>
__device__ __forceinline__ void unit_products(float (&acc)[Rows][4], const QMatrix& m, const X& x, int rows, int o,
                                              const int (&u)[N], const int2 (&d)[N]) {
    LoadedUnit<Bits> lu[N];
#pragma unroll
    for (int n = 0; n < N; n++) load_unit<Bits, Bits>(lu[n], m, d[n], o);
#pragma unroll
    for (int n = 0; n < N; n++) unit_product<Bits, Rows>(acc, lu[n], x, rows, u[n]);
}

// unit_products for a run-time width (a warp's slices mostly share one, so the switch rarely diverges).
template <int Rows, int N, class X>
__device__ __forceinline__ void unit_products_of_width(int bits, float (&acc)[Rows][4], const QMatrix& m, const X& x,
                                                       int rows, int o, const int (&u)[N], const int2 (&d)[N]) {
    switch (bits) {
        case 2: unit_products<2, Rows, N>(acc, m, x, rows, o, u, d); break;
        case 3: unit_products<3, Rows, N>(acc, m, x, rows, o, u, d); break;
        case 4: unit_products<4, Rows, N>(acc, m, x, rows, o, u, d); break;
        case 5: unit_products<5, Rows, N>(acc, m, x, rows, o, u, d); break;
        case 6: unit_products<6, Rows, N>(acc, m, x, rows, o, u, d); break;
        default: unit_products<8, Rows, N>(acc, m, x, rows, o, u, d); break;
    }
}

// The units a slice takes, in order: item i is unit first + (i / 2) · stride + i % 2 (pairs of adjacent units, the
// block's slices interleaved pair by pair); an item at or past `units` is the end.
struct SliceOrder {
    int first, stride, units;
    __device__ __forceinline__ int unit(int i) const { return first + (i >> 1) * stride + (i & 1); }
};

// A slice's items from 0 on, software-pipelined two deep: buffers a and b hold items i and i + 1; as soon as a is
// multiplied it is refilled with item i + 2 (so b's loads were in flight during a's product and a's are during b's),
// and the descriptor of the item after that is loaded meanwhile. Bits: the width every item must have (the one-width
// kernels, buffers of Bits words; the walk ends at the first item of another width), or 0: any width (the mixed-width
// walk, buffers of 8 words, the widest unit, loads predicated on the width and products through a switch; one set of
// buffer registers serves every width). prime() issues the first two items' loads, before the block stages x.
template <int Bits, int Rows>
struct PipelinedWalk {
    static constexpr int kWords = Bits != 0 ? Bits : 8;
    LoadedUnit<kWords> a, b;
    int2 d_next;  // the descriptor of the item after b's
    bool has_a, has_b;

    __device__ __forceinline__ static bool takes(int u, int2 d, int last) {
        return u <= last && (Bits == 0 || (d.y & 0xff) == Bits);
    }

    __device__ __forceinline__ void prime(const QMatrix& m, int o, const SliceOrder& order) {
        const int last = order.units - 1, u0 = order.unit(0), u1 = order.unit(1);
        const int2 d0 = __ldg(m.units + min(u0, last)), d1 = __ldg(m.units + min(u1, last));
        d_next = __ldg(m.units + min(order.unit(2), last));
        has_a = takes(u0, d0, last);
        has_b = has_a && takes(u1, d1, last);
        if (has_a) load_unit<Bits, kWords>(a, m, d0, o);
        if (has_b) load_unit<Bits, kWords>(b, m, d1, o);
    }

    // Returns the first item not taken.
    template <class X>
    __device__ __forceinline__ int run(float (&acc)[Rows][4], const QMatrix& m, const X& x, int rows, int o,
                                       const SliceOrder& order) {
        const int last = order.units - 1;
        for (int i = 0;; i += 2) {
            if (!has_a) return i;
            unit_product_of_width<Bits, Rows>(acc, a, x, rows, order.unit(i));
            has_a = has_b && takes(order.unit(i + 2), d_next, last);
            if (has_a) load_unit<Bits, kWords>(a, m, d_next, o);
            d_next = __ldg(m.units + min(order.unit(i + 3), last));
            if (!has_b) return i + 1;
            unit_product_of_width<Bits, Rows>(acc, b, x, rows, order.unit(i + 1));
            has_b = has_a && takes(order.unit(i + 3), d_next, last);
            if (has_b) load_unit<Bits, kWords>(b, m, d_next, o);
            d_next = __ldg(m.units + min(order.unit(i + 4), last));
        }
    }
};

// x (one row) into shared memory in processing order (gathered through perm, or as it is), chunk c at
// staged[swizzled(c)]. With a perm, x is first copied as it is behind the staged row, then gathered from there: random
// 2-byte reads from shared memory (~4 wavefronts a warp) instead of from L1 (~25, one per cache line touched).
__device__ __forceinline__ void stage_x(uint4* __restrict__ staged, const __half* __restrict__ x,
                                        const int* __restrict__ perm, int in) {
    const int chunks = in / 8;
    const uint4* x4 = reinterpret_cast<const uint4*>(x);
    if (perm == nullptr) {
        for (int c = threadIdx.x; c < chunks; c += blockDim.x) staged[swizzled(c)] = __ldg(x4 + c);
        return;
    }
    uint4* raw = staged + staged_stride(in);
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) raw[c] = __ldg(x4 + c);
    __syncthreads();
    const unsigned short* raw16 = reinterpret_cast<const unsigned short*>(raw);
    uint2* staged_halves = reinterpret_cast<uint2*>(staged);  // half-chunks of 4 halves (fewer registers live)
    for (int t = threadIdx.x; t < 2 * chunks; t += blockDim.x) {
        const int p0 = __ldg(perm + 4 * t), p1 = __ldg(perm + 4 * t + 1), p2 = __ldg(perm + 4 * t + 2),
                  p3 = __ldg(perm + 4 * t + 3);
        staged_halves[2 * swizzled(t >> 1) + (t & 1)] =
            make_uint2(raw16[p0] | static_cast<uint32_t>(raw16[p1]) << 16,
                       raw16[p2] | static_cast<uint32_t>(raw16[p3]) << 16);
    }
}

// y[r, o] (+)= Σ_i x[r, i] · W[o, i] for r < rows ≤ Rows. Staged: x (and perm, or NULL) as given, staged in shared
// memory by the block; otherwise x in global memory, already in processing order. Batch 1 is software-pipelined
// (PipelinedWalk): Uniform is the width every unit is expected to have (qrows = in / 32 · Uniform), or 0 for the
// mixed-width walk; a one-width walk's leftovers (from the first unit of another width) and batches of 2..8 go pair by
// pair through the run-time width switch (batches over 2 rows one unit at a time: their arithmetic per byte hides the
// latency).
template <int Rows, int Uniform>
constexpr int kMinBlocksPerSm = Rows != 1 ? 0 : Uniform != 0 && Uniform <= 4 ? 3 : 2;  // 0: ptxas's choice

template <int Rows, int Uniform, bool Staged>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocksPerSm<Rows, Uniform>)
    qmatrix_gemv(void* __restrict__ y, bool y_f16, bool accumulate, const __half* __restrict__ x,
                 const int* __restrict__ perm, QMatrix m, int rows) {
    constexpr int N = Rows <= 2 ? 2 : 1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int quad = lane % kQuadsPerWarp, slice = warp * kSlicesPerWarp + lane / kQuadsPerWarp;
    const int slices = warps * kSlicesPerWarp, units = m.in / 32;
    const int o = blockIdx.x * kOutputsPerBlock + quad * 4;
    const bool active = o < m.out;
    const SliceOrder order{2 * slice, 2 * slices, units};

    float acc[Rows][4];
#pragma unroll
    for (int r = 0; r < Rows; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) acc[r][c] = 0.0f;

    PipelinedWalk<Uniform, Rows> walk;
    if constexpr (Rows == 1)
        if (active) walk.prime(m, o, order);  // the first loads in flight while x is staged

    XView<Staged> xv;
    if constexpr (Staged) {
        static_assert(Rows == 1, "x is staged at batch 1");
        extern __shared__ uint4 staged_x[];
        xv = {staged_x, staged_stride(m.in)};
        stage_x(staged_x, x, perm, m.in);
        __syncthreads();
    } else {
        xv = {reinterpret_cast<const uint4*>(x), m.in / 8};
    }

    if (active) {
        int i = 0;
        if constexpr (Rows == 1) i = walk.run(acc, m, xv, rows, o, order);
        if constexpr (Rows != 1 || Uniform != 0) {  // the mixed-width walk takes every item
            for (int u; (u = order.unit(i)) < units;) {
                const int2 d0 = __ldg(m.units + u);
                if constexpr (N == 2) {
                    if ((i & 1) == 0 && u + 1 < units) {  // an even item and its pair: units u, u + 1
                        const int2 d1 = __ldg(m.units + u + 1);
                        if (((d0.y ^ d1.y) & 0xff) == 0) {
                            unit_products_of_width<Rows, 2>(d0.y & 0xff, acc, m, xv, rows, o, {u, u + 1}, {d0, d1});
                        } else {  // a width change between the two
                            unit_products_of_width<Rows, 1>(d0.y & 0xff, acc, m, xv, rows, o, {u}, {d0});
                            unit_products_of_width<Rows, 1>(d1.y & 0xff, acc, m, xv, rows, o, {u + 1}, {d1});
                        }
                        i += 2;
                        continue;
                    }
                }
                unit_products_of_width<Rows, 1>(d0.y & 0xff, acc, m, xv, rows, o, {u}, {d0});
                i++;
            }
        }
    }

    // Sum the 8 slices of each warp (lanes differing in bits 2..4), then the warps through shared memory.
    __shared__ float partial[kMaxThreads / 32][Rows][kOutputsPerBlock];
#pragma unroll
    for (int r = 0; r < Rows; r++) {
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
    for (int t = threadIdx.x; t < rows * kOutputsPerBlock; t += blockDim.x) {
        const int r = t / kOutputsPerBlock, col = t % kOutputsPerBlock, oc = blockIdx.x * kOutputsPerBlock + col;
        if (oc >= m.out) continue;
        float sum = 0.0f;
        for (int k = 0; k < warps; k++) sum += partial[k][r][col];
        const size_t at = static_cast<size_t>(r) * m.out + oc;
        if (y_f16) static_cast<__half*>(y)[at] = __float2half_rn(sum);
        else if (accumulate) static_cast<float*>(y)[at] += sum;
        else static_cast<float*>(y)[at] = sum;
    }
}

// x_out[r, k] = x[r, perm[k]]: x's columns in processing order.
__global__ void gather_columns(__half* __restrict__ x_out, const __half* __restrict__ x, const int* __restrict__ perm,
                               int rows, int in) {
    const size_t n = static_cast<size_t>(rows) * in;
    for (size_t t = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; t < n;
         t += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const size_t r = t / in;
        x_out[t] = x[r * in + __ldg(perm + t % in)];
    }
}

// weight[o, perm[32u + j]] = s · (q − z) in fp16 (computed in F32, rounded once). A thread per unit and output quad
// (adjacent threads: adjacent quads); without perm it writes 32 consecutive halves (four 128-bit stores) in each of
// its 4 output rows, with perm 32 scattered halves (done once per weight at load).
template <int Bits>
__device__ __forceinline__ void dequant_unit(__half* __restrict__ weight, const QMatrix& m, const int* __restrict__ perm,
                                             int u, int2 d, int o) {
    LoadedUnit<Bits> lu;
    load_unit<Bits, Bits>(lu, m, d, o);
#pragma unroll
    for (int c = 0; c < 4; c++) {
        __half* row = weight + static_cast<size_t>(o + c) * m.in;
        __align__(16) __half v[32];
#pragma unroll
        for (int j = 0; j < 32; j++) v[j] = __float2half_rn(lu.s[c] * (code_plus_base<Bits>(lu.w[c], j) - lu.zb[c]));
        if (perm == nullptr) {
#pragma unroll
            for (int k = 0; k < 4; k++) reinterpret_cast<uint4*>(row + u * 32)[k] = reinterpret_cast<const uint4*>(v)[k];
        } else {
#pragma unroll
            for (int j = 0; j < 32; j++) row[__ldg(perm + u * 32 + j)] = v[j];
        }
    }
}

__global__ void qmatrix_dequant(__half* __restrict__ weight, QMatrix m, const int* __restrict__ perm) {
    const int quads = m.out / 4;
    const size_t t = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
    if (t >= static_cast<size_t>(quads) * (m.in / 32)) return;
    const int o = static_cast<int>(t % quads) * 4, u = static_cast<int>(t / quads);
    const int2 d = __ldg(m.units + u);
    switch (d.y & 0xff) {
        case 2: dequant_unit<2>(weight, m, perm, u, d, o); break;
        case 3: dequant_unit<3>(weight, m, perm, u, d, o); break;
        case 4: dequant_unit<4>(weight, m, perm, u, d, o); break;
        case 5: dequant_unit<5>(weight, m, perm, u, d, o); break;
        case 6: dequant_unit<6>(weight, m, perm, u, d, o); break;
        default: dequant_unit<8>(weight, m, perm, u, d, o); break;
    }
}

bool aligned(const void* p, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0; }

// Checks of the matrix shared by every entry point; the unit descriptors live on the device and are trusted.
int check_qmatrix(const char* fn, const qt_qmatrix* w) {
    QT_REQUIRE(w != nullptr, "%s: NULL matrix", fn);
    QT_REQUIRE(w->qweight && w->units && w->scales, "%s: NULL qweight, units or scales", fn);
    QT_REQUIRE(w->in > 0 && w->out > 0 && w->in % 32 == 0 && w->out % 8 == 0,
               "%s: in %d, out %d (need in %% 32 == 0, out %% 8 == 0)", fn, w->in, w->out);
    QT_REQUIRE(w->groups > 0 && w->qrows >= 2 * (w->in / 32) && w->qrows <= 8 * (w->in / 32),
               "%s: %d groups, %d qweight rows for %d inputs (need groups > 0, 2..8 rows per 32 inputs)", fn, w->groups,
               w->qrows, w->in);
    QT_REQUIRE(aligned(w->qweight, 16), "%s: qweight is not 16-byte aligned", fn);
    QT_REQUIRE(aligned(w->units, 8) && aligned(w->scales, 8) && aligned(w->zeros, 8) && aligned(w->perm, 4),
               "%s: units, scales or zeros not 8-byte aligned, or perm not 4-byte aligned", fn);
    return QT_OK;
}

QMatrix device_view(const qt_qmatrix* w) {
    return QMatrix{static_cast<const uint32_t*>(w->qweight), static_cast<const int2*>(w->units),
                   static_cast<const __half*>(w->scales), static_cast<const __half*>(w->zeros), w->in, w->out};
}

// Shared memory a block stages x in at batch 1 (plus the unpermuted copy a perm is gathered from), or 0 where x is
// read from global memory instead, gathered first into scratch when there is a perm: x over kMaxStagedBytes, and
// batches of 2..8 rows (staged, ptxas hoists their shared-memory loads of x ahead of the products and spills at the
// register counts that keep 2-3 blocks per SM; their arithmetic per byte already hides the latency).
size_t staged_bytes(const qt_qmatrix* w, int rows) {
    const size_t bytes = static_cast<size_t>(staged_stride(w->in)) * sizeof(uint4) +
                         (w->perm != nullptr ? static_cast<size_t>(w->in) * sizeof(__half) : 0);
    return rows == 1 && bytes <= kMaxStagedBytes ? bytes : 0;
}

using GemvKernel = void (*)(void*, bool, bool, const __half*, const int*, QMatrix, int);

// Every GEMV kernel: staged batch 1 (mixed widths, then one width 2, 3, 4, 5, 6, 8), then x in global memory at 1
// (too large to stage), 2, 4 and 8 rows.
constexpr GemvKernel kGemvKernels[] = {
    qmatrix_gemv<1, 0, true>,  qmatrix_gemv<1, 2, true>,  qmatrix_gemv<1, 3, true>,  qmatrix_gemv<1, 4, true>,
    qmatrix_gemv<1, 5, true>,  qmatrix_gemv<1, 6, true>,  qmatrix_gemv<1, 8, true>,  qmatrix_gemv<1, 0, false>,
    qmatrix_gemv<2, 0, false>, qmatrix_gemv<4, 0, false>, qmatrix_gemv<8, 0, false>};
constexpr int kGemvKernelCount = sizeof(kGemvKernels) / sizeof(kGemvKernels[0]);

// Index in kGemvKernels. Batch 1 with qrows = in / 32 · B: every unit is probably B wide (GPTQ; an EXL2 mix averaging
// B is still right, the one-width walk just ends at its first unit of another width and the rest goes pair by pair).
int gemv_kernel_index(const qt_qmatrix* w, int rows, bool staged) {
    if (!staged) return rows == 1 ? 7 : rows == 2 ? 8 : rows <= 4 ? 9 : 10;
    const int units = w->in / 32, uniform = w->qrows % units == 0 ? w->qrows / units : 0;
    switch (uniform) {
        case 2: return 1;
        case 3: return 2;
        case 4: return 3;
        case 5: return 4;
        case 6: return 5;
        case 8: return 6;
        default: return 0;
    }
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_qmatrix_gemv_scratch_bytes(const qt_qmatrix* w, int rows, size_t* bytes) {
    QT_TRY(check_qmatrix("qt_qmatrix_gemv_scratch_bytes", w));
    QT_REQUIRE(bytes != nullptr, "qt_qmatrix_gemv_scratch_bytes: NULL bytes");
    QT_REQUIRE(rows >= 1 && rows <= kMaxGemvRows, "qt_qmatrix_gemv_scratch_bytes: rows %d (need 1..%d)", rows,
               kMaxGemvRows);
    *bytes = w->perm != nullptr && staged_bytes(w, rows) == 0 ? static_cast<size_t>(rows) * w->in * sizeof(__half) : 0;
    return QT_OK;
}

int qt_qmatrix_gemv(void* y, int y_dtype, int accumulate, const void* x, const qt_qmatrix* w, int rows, void* scratch,
                    size_t scratch_bytes, void* stream) {
    const char* fn = "qt_qmatrix_gemv";
    QT_TRY(check_qmatrix(fn, w));
    QT_REQUIRE(y && x, "%s: NULL y or x", fn);
    QT_REQUIRE(rows >= 1 && rows <= kMaxGemvRows, "%s: rows %d (need 1..%d)", fn, rows, kMaxGemvRows);
    QT_REQUIRE(y_dtype == QT_F32 || y_dtype == QT_F16, "%s: y dtype %s (need F32 or F16)", fn, dtype_name(y_dtype));
    QT_REQUIRE(!accumulate || y_dtype == QT_F32, "%s: accumulate needs F32 y (y is %s)", fn, dtype_name(y_dtype));
    QT_REQUIRE(aligned16(x), "%s: x is not 16-byte aligned", fn);
    const cudaStream_t s = as_stream(stream);
    const auto* xp = static_cast<const __half*>(x);
    const auto* perm = static_cast<const int*>(w->perm);
    const size_t smem = staged_bytes(w, rows);
    if (perm != nullptr && smem == 0) {  // too large to stage: gathered once into scratch, read from there
        const size_t need = static_cast<size_t>(rows) * w->in * sizeof(__half);
        QT_REQUIRE(scratch != nullptr && scratch_bytes >= need, "%s: scratch of %zu bytes for a perm (need %zu)", fn,
                   scratch != nullptr ? scratch_bytes : 0, need);
        QT_REQUIRE(aligned16(scratch), "%s: scratch is not 16-byte aligned", fn);
        auto* gathered = static_cast<__half*>(scratch);
        gather_columns<<<blocks_for(static_cast<size_t>(rows) * w->in, 256, 4096), 256, 0, s>>>(gathered, xp, perm,
                                                                                                 rows, w->in);
        QT_TRY(check_launch("gather_columns"));
        xp = gathered;
        perm = nullptr;
    }
    const int index = gemv_kernel_index(w, rows, smem != 0);
    if (smem != 0) {  // the opt-in to more than 48 KB of shared memory (static included), once per kernel and device
        static bool opted_in[64][kGemvKernelCount];
        int device = 0;
        QT_CUDA_TRY(cudaGetDevice(&device));
        if (device < 0 || device >= 64) return fail(QT_ERR_UNSUPPORTED, "%s: device %d", fn, device);
        if (!opted_in[device][index]) {
            QT_CUDA_TRY(cudaFuncSetAttribute(kGemvKernels[index], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kMaxStagedBytes)));
            opted_in[device][index] = true;
        }
    }
    const unsigned blocks = (w->out + kOutputsPerBlock - 1) / kOutputsPerBlock, threads = 32 * gemv_warps();
    kGemvKernels[index]<<<blocks, threads, smem, s>>>(y, y_dtype == QT_F16, accumulate != 0, xp, perm,
                                                      device_view(w), rows);
    return check_launch("qmatrix_gemv");
}

int qt_qmatrix_dequant(void* weight, const qt_qmatrix* w, void* stream) {
    QT_TRY(check_qmatrix("qt_qmatrix_dequant", w));
    QT_REQUIRE(weight != nullptr, "qt_qmatrix_dequant: NULL weight");
    QT_REQUIRE(aligned16(weight), "qt_qmatrix_dequant: weight is not 16-byte aligned");
    const size_t threads = static_cast<size_t>(w->out / 4) * (w->in / 32);
    const unsigned blocks = static_cast<unsigned>((threads + 255) / 256);
    qmatrix_dequant<<<blocks, 256, 0, as_stream(stream)>>>(static_cast<__half*>(weight), device_view(w),
                                                           static_cast<const int*>(w->perm));
    return check_launch("qmatrix_dequant");
}

}  // extern "C"
