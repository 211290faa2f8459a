// Quantized matrix products straight from packed codes, for GPTQ and EXL2 alike (qt_qmatrix in qtool.h is the layout):
// qt_qmatrix_gemv for up to 64 rows (a CUDA-core GEMV for decoding's 1..8, tensor cores above: "tensor cores" below),
// qt_qmatrix_dequant for the fp16 weight that a cuBLAS product then takes (prefill, ExLlamaV2's approach for many rows).
//
// Work item: one unit (32 processing rows) of 4 adjacent outputs. Whatever the width, a unit of one output is `bits`
// whole words of qweight (a 3-bit unit is 32 codes in 3 words), so a thread reads `bits` qweight rows as one 128-bit
// load each. A unit has one group, so its sum factors as s · Σ (q − z)·x. qt_qmatrix_prepare has rearranged each
// output's words of a unit once, at load, into pairs of codes 16 bits apart (PairPacking below), so every width runs
// in half2 arithmetic: one LOP3 (and a shift shared by a few fields) turns a pair into the halves 1024 + q·2^e, one
// HFMA2 makes both (q − z) exactly (scaled by 2^−(bits−4) above 4 bits), one HFMA2 per row multiplies them by the
// pair's two x halves as they lie in memory: ~1.1 instructions a code at 4 bits, with no x shuffling. A unit's 16
// products per lane are summed in half (~1e-3 relative rounding, so F32 y is checked to 1e-2, as F16 y is), then get
// the scale in F32; the sums across units are F32. The width is read per unit and switched on (a warp's slices
// mostly share one, so the switch rarely diverges) into code made for it.
// GEMV block: 16 outputs (4 quads) × 8 input slices per warp × 8 warps, or 4 past one wave (launch_gemv). At 1..2 rows a
// slice walks pairs of units (both units' `bits` 128-bit loads issued before either is used; a pair of two widths
// goes one unit at a time); above 2 rows one unit at a time (their arithmetic per byte hides the latency). The 8
// slices of a warp are summed by shuffles, the warps through shared memory. x is read through the read-only path
// (__ldg): a unit's 64 bytes of one row go to its quad's 4 lanes in one broadcast load; the reuse is across blocks
// (every block reads its part of x), which L1 and L2 serve.
// Input split, for mixed-width matrices (qt_qmatrix.uniform_bits == 0, i.e. EXL2) with F32 y: the inputs go over up
// to 4 blocks (grid.y) while out/16 blocks are under 2 waves and every slice keeps a unit, each block adding its sums
// into y by atomicAdd (y zeroed first by cudaMemsetAsync unless accumulating). It took the 7B-shaped EXL2 mix from
// 32.7 to 23.7 µs but slowed the one-width GPTQ shapes by up to 36 % (table below), so one-width matrices, and F16 y
// (no atomics into half in one pass), keep one block per output range.
// ptxas (sm_90, nvcc 13.0): 64 registers at 1 row (held there so that 4 blocks fit an SM; 16 bytes of stack), 153 at
// 2, 154 at 3..4, 240 at 5..8.
//
// Bytes per token (batch 1) = in·out·bits/8 (qweight, read once) + groups·out·2 (scales) + groups·out·2 (zeros, when
// present) + in/32·8 (units) + in·2 (x) + out·4 (y). 4096 → 11008 at 4 bits, group 128: ≈ 24.0 MB, so at 3.0 TB/s of
// HBM the floor is 8.0 µs (85 % of the copy bandwidth: 9.4 µs). ncu on the older F32-only kernel (1×4096→4096, 256
// blocks): 0.48 waves, 23 % achieved occupancy, 74 % of cycles with no eligible warp, much of it instruction-fetch
// stalls from the six unrolled widths: latency- and fetch-bound, not bandwidth-bound, which is what the variants below
// went after.
//
// Measured (H100 SXM, copy 3014 GB/s, 2026-11-23; 4-bit GPTQ g128 at batch 1 in µs, and 7B-shaped EXL2 4.0 bpw batch-1
// decode in tokens/s), each variant selected at run time for the measurement:
//                                      4096→11008  11008→4096  4096→4096  4096→32000  EXL2 mix+perm  decode
//   v0 F32 arithmetic, no split             15.62       16.22       8.21       35.86          32.89   216.7
//   v1 4-bit units in half2                 15.73       14.54       7.81       34.88          32.68   232.0
//   v2 a kernel per width (no switch)       16.27       16.90       8.42       36.54          32.41   214.2
//   v3 input split + atomicAdd              19.20       19.64      11.15       36.23          24.03   215.9
//   v5 = v1 + v3                            18.44       18.03      10.55       35.16          23.71   231.3
//   v7 = v1 + v2 + v3                       17.87       17.76       9.97       34.48          23.42   233.5
// So this file is v1 everywhere plus v3 where it pays (mixed widths), expected at v1's times on one-width shapes and
// v5's on the EXL2 mix (test_kernels --bench qmatrix times both kinds).
// v2 gained nothing alone (the instruction-fetch stalls were not what held the kernel back) and ~1 % on top of v5 (v7),
// not worth a kernel per width and row count: it is gone, and uniform_bits now only decides the split.
// Dependent launches (internal.h): the GEMV and gather, like every kernel of the decode chain, start while the kernel
// before them drains. Measured 2026-11-23 (H100 SXM, copy 3015 GB/s; µs at batch 1, matrices rotated over > 200 MB;
// decode in tokens/s, 7B-shaped EXL2 4.0 bpw):
//                                      4096→4096  4096→11008  11008→4096  4096→32000  EXL2 mix+perm 4096→11008  decode
//   reading the bytes alone, lone kernel    5.85       10.94       11.00       26.21                      10.81
//   the same, chained launches              3.45        8.26        8.13       23.54                       8.09
//   v1, ordinary launches                   9.01       17.56       18.64       40.66                      25.74   213.8
//   v1, dependent launches (this file)      6.45       15.10       13.31       33.29                      22.81   238.5
// So a chained pure read reaches 96–98 % of copy bandwidth and this GEMV 53–70 %: the gap is the kernel's own.
// Several matrices of one input order (q/k/v, gate/up) go in one launch (qt_qmatrix_gemv_many, QMatrixSet): three
// 4096-output products are 256 blocks each, under half a wave, and one launch of all three is 768. Measured 2026-11-23
// (H100 SXM, copy 3015 GB/s; EXL2 mixes with perm as above, F16 y as decoding writes q/k/v and gate/up; µs):
//                                      3 × 4096→4096 (q/k/v)   2 × 4096→11008 (gate/up)   7B EXL2 decode   GPTQ-4 decode
//   one by one (x gathered once)         43.0 / 80.5 (2 runs)              51.9               235 tok/s       325 tok/s
//   one launch                                  27.1                     41.5               278.5           358–368
// (the decode figures include 8-bit units in half2, which took 8-bit 11008→4096 from 21.6 to 20.6 µs.) An ncu profile
// of that build (4-bit 1×4096→11008, 688 blocks, 1.3 waves): DRAM 32 % of peak, issue slots 28 % busy, 61 % of cycles
// with no eligible warp, and of the 17.9 cycles between a warp's instructions 8.2 waiting for an instruction fetch:
// each warp runs its unrolled unit code once, so the code streams through cold instruction caches.
// Tried and dropped the same day: the input split joined through distributed shared memory in clusters of the splits
// (any y, no memset, no atomics): EXL2 mix 4096→4096 12.9 → 10.9 µs, but 4096→11008 21.9 → 26.2, 11008→4096
// 21.8 → 28.8, and decode 278 → 245 tokens/s (split for every matrix: GPTQ decode 366 → 295); no split at all for
// the EXL2 mixes decodes within noise of the atomic split (270–274 against 272–278 tokens/s).
// Tried with the dependent launches and dropped:
//   an L2 prefetch of each thread's weights before the dependency wait: 6.12 / 14.61 / 18.56 / 37.77, decode 234;
//   a tile kernel (a warp owns 128 outputs, 512 contiguous bytes a row; clusters of 1–8 blocks split the inputs and
//   sum through distributed shared memory, no atomics): 9.91 / 19.46 / 17.02 / 31.43 at its chosen split, at best
//   9.70 / 14.91 / 16.80 with a forced one, decode 211;
//   a pipelined one-width walk (the next pair's loads issued before this pair's arithmetic) with 1, 2, 4 or 8 warps a
//   block: 4096→4096 in 16.91 / 10.21 / 7.84 / 7.43 µs, never better than v1 (fewer warps hide less).
// Tried earlier and dropped, all slower: a software-pipelined batch-1 walk (next unit's loads in flight: 19.8 µs on
// 4096→11008, decode 201 tokens/s); x staged in shared memory with the perm gather fused
// (22.2 µs); 4 warps per block (11008→4096 21.8 µs); 16 warps per block at 1 row (4096→11008 18.1 µs, decode 207).
// Every width in half2 (the pair packing), measured 2026-11-23 against the F32 3/5/6-bit path it replaced (H100 SXM,
// copy 3013 GB/s; µs at batch 1; decode in tokens/s, 7B-shaped synth, the two builds interleaved on one machine):
//                                  3-bit 4096→11008  3-bit 11008→4096  EXL2 mix+perm 4096→4096  q/k/v one launch  gate/up  EXL2 decode  GPTQ-4 decode
//   3, 5, 6 bits in F32                     13.70             14.76                    19.40             26.53    41.20  283.0, 283.9  383.5, 378.3
//   every width in half2                    12.94             12.50                    11.71             22.02    34.23  312.5, 307.4  376.0, 378.2
// (one-width 4- and 8-bit shapes within ±5 %; at 1 row, without the register cap: EXL2 decode 291, GPTQ 384.)
// Tried and dropped the same day: a lane-per-output layout (a tile of 32 outputs per block, each lane's unit words
// contiguous with its neighbours', 512 bytes a warp load, warps splitting the inputs, batches of units in flight):
// its best 4-bit-only variant took 13.92 / 16.31 / 7.69 / 30.51 µs on 4096→11008 / 11008→4096 / 4096→4096 / 4096→32000
// against 14.92 / 13.45 / 6.34 / 33.19 here, and with the width switch of EXL2 mixes 21–26 µs on 4096→11008.
// Measured 2026-11-23 (H100 SXM, copy 3015 GB/s; builds interleaved on one machine; µs at batch 1, decode tokens/s):
//                                      4096→11008  11008→4096  q/k/v one launch  EXL2 decode   GPTQ-4 decode
//   starting build                          14.79       13.34             21.98  308.8, 306.6  376.9, 374.7
//   weights loaded before the wait          14.19       14.38             21.39  316.4, 315.5  389.3, 393.9
//   the same, 4 warps a block always        13.00       17.28             17.08  337.1, 339.3  369.8, 372.6
//   the same without the 1-row register cap 14.20       12.19             26.21  278.8, 279.4  383.9, 386.4
// so the GEMV issues its first units' weight loads before griddepcontrol.wait (only x waits) and lets the next kernel
// launch at once, and takes 4 warps a block only past one wave of 8-warp blocks (the final build, on a later machine:
// 13.09 / 14.15 / 16.50 µs, decode 334.3, 336.5 and 388.9, 393.1).
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>

#include <cooperative_groups.h>

#include "internal.h"
#include "tensor_ops.h"

namespace cg = cooperative_groups;

namespace qt {
namespace {

constexpr int kMaxGemvRows = 8;      // the CUDA-core GEMV's most rows
constexpr int kDefaultGemvRows = 8;  // and the most it takes unless QTOOL_QMATRIX_GEMV_ROWS says otherwise
constexpr int kQuadsPerWarp = 4;                     // lanes 0..3 of a slice: 16 outputs, 64 contiguous bytes a row
constexpr int kSlicesPerWarp = 32 / kQuadsPerWarp;   // 8 input slices per warp, summed by shuffles
constexpr int kOutputsPerBlock = 4 * kQuadsPerWarp;  // 16
constexpr int kMaxThreads = 256;

// QTOOL_QMATRIX_WARPS (4 or 8): the warps of every GEMV block, for measurements; 0 (unset): chosen per launch.
int forced_gemv_warps() {
    static const int warps = [] {
        const char* e = getenv("QTOOL_QMATRIX_WARPS");
        const int v = e != nullptr ? atoi(e) : 0;
        return v == 4 || v == 8 ? v : 0;
    }();
    return warps;
}

// The packing qt_qmatrix_prepare leaves (qtool.h): each output's `Bits` words of a unit hold its 32 codes as 16 pairs
// (codes 2j, 2j + 1), the two codes of a pair 16 bits apart, so that ((w >> shift) & mask) | 0x64006400 is the half2
// (1024 + q_2j·2^e, 1024 + q_2j+1·2^e) in one LOP3 (plus a shift shared by a group of fields), exact since it stays
// under 2048, and pair j meets the halves (x_2j, x_2j+1) as they lie in memory. A half word takes F = 16 / Bits
// fields, so pairs 0 .. Bits·F − 1 sit in fields: pair j in word j / F at bit Bits·(j % F) (and 16 more), fields
// grouped G to a shift (field i: shift Bits·(i − i % G), e = Bits·(i % G)). The bits left over (16 − F·Bits a half
// word at 3, 5 and 6 bits) take the last pairs: at 3 and 5 bits one pair whose code bit t is bit 15 of word t; at 6
// bits four pairs, pair 12 + m with its low 4 bits at bits 12..15 of word m and its high 2 at bits 12 + 2(m % 2) of
// word 4 + m / 2.
template <int Bits>
struct PairPacking {
    static constexpr int kFields = 16 / Bits;                                      // F
    static constexpr int kDirect = Bits * kFields;                                 // pairs in fields
    static constexpr int kGroup = Bits == 2 ? 4 : Bits == 3 ? 3 : Bits <= 5 ? 2 : 1;  // G: (2^Bits − 1)·2^e < 1024
    // (q − z)·kF stays within ±16, so a unit's 16 products a lane stay far from half's range at any x under 255.
    static constexpr float kF = Bits > 4 ? 1.0f / (1 << (Bits - 4)) : 1.0f;
};

// The exponent e of pair J: pair_bits gives it as the half2 bits of (1024 + q_2J·2^e, 1024 + q_2J+1·2^e).
template <int Bits, int J>
__host__ __device__ constexpr int pair_exponent() {
    using P = PairPacking<Bits>;
    if constexpr (J < P::kDirect) return Bits * ((J % P::kFields) % P::kGroup);
    else return Bits == 6 ? 4 : 0;
}

template <int Bits, int J>
__device__ __forceinline__ uint32_t pair_bits(const uint32_t (&w)[Bits]) {
    using P = PairPacking<Bits>;
    constexpr uint32_t kMask = ((1u << Bits) - 1) * 0x00010001u, kMagic = 0x64006400u;
    if constexpr (J < P::kDirect) {
        constexpr int field = J % P::kFields, shift = Bits * (field - field % P::kGroup);
        return ((w[J / P::kFields] >> shift) & (kMask << pair_exponent<Bits, J>())) | kMagic;
    } else if constexpr (Bits == 6) {
        constexpr int m = J - P::kDirect;
        return ((w[m] >> 8) & 0x00f000f0u) | ((w[4 + m / 2] >> (4 + 2 * (m % 2))) & 0x03000300u) | kMagic;
    } else {  // 3 or 5 bits: code bit t is bit 15 of word t
        uint32_t v = kMagic;
#pragma unroll
        for (int t = 0; t < Bits; t++) v |= (w[t] >> (15 - t)) & (0x00010001u << t);
        return v;
    }
}

// The packing of one output's unit: codes c[0..31] (processing rows 32u .. 32u + 31) into w[0..Bits-1].
template <int Bits>
__device__ __forceinline__ void pack_pairs(uint32_t (&w)[Bits], const int (&c)[32]) {
    using P = PairPacking<Bits>;
#pragma unroll
    for (int k = 0; k < Bits; k++) w[k] = 0;
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const uint32_t lo = c[2 * j], hi = c[2 * j + 1];
        if (j < P::kDirect) {
            const int bit = Bits * (j % P::kFields);
            w[j / P::kFields] |= lo << bit | hi << (16 + bit);
        } else if constexpr (Bits == 6) {  // only left-over pairs reach here: j >= kDirect
            const int m = j - P::kDirect, high = 12 + 2 * (m % 2);
            w[m] |= (lo & 15) << 12 | (hi & 15) << 28;
            w[4 + m / 2] |= (lo >> 4) << high | (hi >> 4) << (16 + high);
        } else {
#pragma unroll
            for (int t = 0; t < Bits; t++) w[t] |= ((lo >> t) & 1) << 15 | ((hi >> t) & 1) << 31;
        }
    }
}

// The `Bits` qweight rows of one unit for outputs o..o+3 (line = qweight + first row · out + o): w[c][k] is row k,
// column o + c.
template <int Bits>
__device__ __forceinline__ void load_unit(uint32_t (&w)[4][Bits], const uint32_t* __restrict__ line, int out) {
    uint4 v[Bits];
#pragma unroll
    for (int k = 0; k < Bits; k++) v[k] = __ldg(reinterpret_cast<const uint4*>(line + static_cast<size_t>(k) * out));
#pragma unroll
    for (int k = 0; k < Bits; k++) {
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

// Scale s and zero z of group g for outputs o..o+3.
template <int Bits>
__device__ __forceinline__ void load_group(float (&s)[4], float (&z)[4], const QMatrix& m, int g, int o) {
    const size_t at = static_cast<size_t>(g) * m.out + o;
    load_half4(s, m.scales + at);
    if (m.zeros != nullptr) load_half4(z, m.zeros + at);
    else
#pragma unroll
        for (int c = 0; c < 4; c++) z[c] = static_cast<float>(1 << (Bits - 1));
}

__device__ __forceinline__ __half2 as_half2(uint32_t v) { return *reinterpret_cast<const __half2*>(&v); }

// dot[r][c] += (q_2j − z_c, q_2j+1 − z_c)·kF · (x_2j, x_2j+1) of row r for pair J of the 4 outputs: one HFMA2 turns
// the pair's bits into the exact (q − z)·kF (kmul = 2^−e·kF, cneg[c][e] = −(1024·2^−e + z_c)·kF), one per row
// multiplies.
template <int Bits, int J, int Rows>
__device__ __forceinline__ void pair_products(__half2 (&dot)[Rows][4], const uint32_t (&w)[4][Bits],
                                              const __half2 (&cneg)[4][9], const uint4 (&xv)[Rows]) {
    constexpr int e = pair_exponent<Bits, J>();
    const __half2 kmul = __float2half2_rn(PairPacking<Bits>::kF / (1 << e));
#pragma unroll
    for (int c = 0; c < 4; c++) {
        const __half2 q = __hfma2(as_half2(pair_bits<Bits, J>(w[c])), kmul, cneg[c][e]);
#pragma unroll
        for (int r = 0; r < Rows; r++)
            dot[r][c] = __hfma2(q, as_half2(reinterpret_cast<const uint32_t*>(&xv[r])[J % 4]), dot[r][c]);
    }
}

template <int Bits, int Rows, int Chunk>
__device__ __forceinline__ void chunk_products(__half2 (&dot)[Rows][4], const uint32_t (&w)[4][Bits],
                                               const __half2 (&cneg)[4][9], const uint4 (&xv)[Rows]) {
    pair_products<Bits, 4 * Chunk, Rows>(dot, w, cneg, xv);
    pair_products<Bits, 4 * Chunk + 1, Rows>(dot, w, cneg, xv);
    pair_products<Bits, 4 * Chunk + 2, Rows>(dot, w, cneg, xv);
    pair_products<Bits, 4 * Chunk + 3, Rows>(dot, w, cneg, xv);
}

// acc[r][c] += Σ_j x[r, 32u + j] · s · (q_j − z) for the N units u[n] (descriptors d[n], all `Bits` wide) of outputs
// o..o+3, in half2 arithmetic at every width (~1.1 instructions a code at 4 bits): each lane sums a unit's 16
// products in half (about 1e-3 relative rounding), then the two lanes go to F32, get the scale (and 1/kF) and join
// acc. All N units' loads are issued before the first is used; x rows ≥ rows read as zeros.
template <int Bits, int Rows, int N>
__device__ __forceinline__ void unit_products(float (&acc)[Rows][4], const QMatrix& m, const __half* __restrict__ x,
                                              int rows, int o, const int (&u)[N], const int2 (&d)[N]) {
    constexpr float kF = PairPacking<Bits>::kF;
    uint32_t w[N][4][Bits];
    float s[N][4], z[N][4];
#pragma unroll
    for (int n = 0; n < N; n++) {
        load_unit<Bits>(w[n], m.qweight + static_cast<size_t>(d[n].x) * m.out + o, m.out);
        load_group<Bits>(s[n], z[n], m, d[n].y >> 8, o);
    }
    x = wait_for_prior_grid(x);  // x may be the kernel before's output; the weights need no wait
#pragma unroll
    for (int n = 0; n < N; n++) {
        __half2 cneg[4][9], dot[Rows][4];  // cneg[c][e]: only the exponents the width uses survive compilation
#pragma unroll
        for (int c = 0; c < 4; c++)
#pragma unroll
            for (int e = 0; e < 9; e++) cneg[c][e] = __float2half2_rn(-(1024.0f / (1 << e) + z[n][c]) * kF);
#pragma unroll
        for (int r = 0; r < Rows; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) dot[r][c] = __float2half2_rn(0.0f);
        const uint4* xu = reinterpret_cast<const uint4*>(x + u[n] * 32);
        uint4 xv[Rows];
#define QT_CHUNK(C)                                                                                                 \
    _Pragma("unroll") for (int r = 0; r < Rows; r++) xv[r] =                                                        \
        Rows == 1 || r < rows ? __ldg(xu + static_cast<size_t>(r) * (m.in / 8) + C) : make_uint4(0, 0, 0, 0);       \
    chunk_products<Bits, Rows, C>(dot, w[n], cneg, xv);
        QT_CHUNK(0)
        QT_CHUNK(1)
        QT_CHUNK(2)
        QT_CHUNK(3)
#undef QT_CHUNK
#pragma unroll
        for (int r = 0; r < Rows; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const float2 f = __half22float2(dot[r][c]);
                acc[r][c] = fmaf(s[n][c] * (1.0f / kF), f.x + f.y, acc[r][c]);
            }
    }
}

// The products of N units all `bits` wide, the width known at run time (a warp's slices mostly share one, so the
// switch rarely diverges).
template <int Rows, int N>
__device__ __forceinline__ void unit_products_of_width(int bits, float (&acc)[Rows][4], const QMatrix& m,
                                                       const __half* __restrict__ x, int rows, int o, const int (&u)[N],
                                                       const int2 (&d)[N]) {
    switch (bits) {
        case 2: unit_products<2, Rows, N>(acc, m, x, rows, o, u, d); break;
        case 3: unit_products<3, Rows, N>(acc, m, x, rows, o, u, d); break;
        case 4: unit_products<4, Rows, N>(acc, m, x, rows, o, u, d); break;
        case 5: unit_products<5, Rows, N>(acc, m, x, rows, o, u, d); break;
        case 6: unit_products<6, Rows, N>(acc, m, x, rows, o, u, d); break;
        default: unit_products<8, Rows, N>(acc, m, x, rows, o, u, d); break;
    }
}

// Sums the slices of a block (the 8 of each warp by shuffles, lanes differing in bits 2..4; then the warps through
// shared memory) and stores its 16 outputs: y = or += the sum, or with atomic (blocks splitting the inputs) F32
// y += it by atomicAdd.
template <int Rows>
__device__ __forceinline__ void store_block_sums(const float (&acc)[Rows][4], void* __restrict__ y, bool y_f16,
                                                 bool accumulate, bool atomic, int block, int out, int rows) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5, quad = lane % kQuadsPerWarp;
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
        const int r = t / kOutputsPerBlock, col = t % kOutputsPerBlock, oc = block * kOutputsPerBlock + col;
        if (oc >= out) continue;
        float sum = 0.0f;
        for (int k = 0; k < warps; k++) sum += partial[k][r][col];
        const size_t at = static_cast<size_t>(r) * out + oc;
        if (atomic) atomicAdd(static_cast<float*>(y) + at, sum);
        else if (y_f16) static_cast<__half*>(y)[at] = __float2half_rn(sum);
        else if (accumulate) static_cast<float*>(y)[at] += sum;
        else static_cast<float*>(y)[at] = sum;
    }
}

// Up to kMaxParts matrices with one input count that multiply the same x in one launch (q/k/v, gate/up: three
// 4096-output products fill half a wave of the GPU each, one launch of all three fills 1.5): part p takes blocks
// [block_end[p − 1], block_end[p]) and writes y[p].
constexpr int kMaxParts = 4;
struct QMatrixSet {
    QMatrix m[kMaxParts];
    void* y[kMaxParts];
    int block_end[kMaxParts];
    int parts;
};

// y[r, o] (+)= Σ_i x[r, i] · W[o, i] for r < rows ≤ Rows, x in processing order, W and y the part of blockIdx.x.
// Block (bx, by) takes that part's outputs 16·b .. 16·b + 15 (b = bx − the part's first block) and units
// [by · units / gridDim.y, (by + 1) · units / gridDim.y); with gridDim.y > 1 it adds its sums to F32 y by atomicAdd.
// Slice k takes the unit pairs starting at begin + 2k, begin + 2k + 2·slices, ... (one unit at a time above 2 rows,
// and when the range is too short to give every slice a pair, so that all slices work).
template <int Rows>
__global__ void __launch_bounds__(kMaxThreads, Rows == 1 ? 4 : 1) qmatrix_gemv(QMatrixSet set, bool y_f16, bool accumulate,
                                                            const __half* __restrict__ x, int rows) {
    QMatrix m = set.m[0];  // the part's fields chosen by unrolled selects: the set stays in the constant bank
    void* y = set.y[0];
    int block = blockIdx.x;
#pragma unroll
    for (int p = 1; p < kMaxParts; p++)
        if (p < set.parts && static_cast<int>(blockIdx.x) >= set.block_end[p - 1]) {
            m = set.m[p];
            y = set.y[p];
            block = blockIdx.x - set.block_end[p - 1];
        }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int quad = lane % kQuadsPerWarp, slice = warp * kSlicesPerWarp + lane / kQuadsPerWarp;
    const int slices = (blockDim.x >> 5) * kSlicesPerWarp, units = m.in / 32;
    const int begin = blockIdx.y * units / gridDim.y, end = (blockIdx.y + 1) * units / gridDim.y;
    const int o = block * kOutputsPerBlock + quad * 4;

    float acc[Rows][4];
#pragma unroll
    for (int r = 0; r < Rows; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) acc[r][c] = 0.0f;

    allow_dependents();  // at once: the next kernel's blocks may load their weights as slots free up
    bool paired = false;
    if constexpr (Rows <= 2) {  // both units' loads in flight before either is used
        paired = end - begin >= 2 * slices;
        for (int u = begin + 2 * slice; paired && o < m.out && u < end; u += 2 * slices) {
            const int2 d0 = __ldg(m.units + u);
            if (u + 1 < end) {
                const int2 d1 = __ldg(m.units + u + 1);
                if (((d0.y ^ d1.y) & 0xff) == 0) {
                    unit_products_of_width<Rows, 2>(d0.y & 0xff, acc, m, x, rows, o, {u, u + 1}, {d0, d1});
                    continue;
                }
                unit_products_of_width<Rows, 1>(d1.y & 0xff, acc, m, x, rows, o, {u + 1}, {d1});  // widths differ
            }
            unit_products_of_width<Rows, 1>(d0.y & 0xff, acc, m, x, rows, o, {u}, {d0});
        }
    }
    for (int u = begin + slice; !paired && o < m.out && u < end; u += slices) {
        const int2 d0 = __ldg(m.units + u);
        unit_products_of_width<Rows, 1>(d0.y & 0xff, acc, m, x, rows, o, {u}, {d0});
    }
    wait_for_prior_grid();  // before y is written
    store_block_sums<Rows>(acc, y, y_f16, accumulate, gridDim.y > 1, block, m.out, rows);
}

// x_out[r, k] = x[r, perm[k]]: x's columns in processing order.
__global__ void gather_columns(__half* __restrict__ x_out, const __half* __restrict__ x, const int* __restrict__ perm,
                               int rows, int in) {
    wait_for_prior_grid();
    allow_dependents();
    const size_t n = static_cast<size_t>(rows) * in;
    for (size_t t = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; t < n;
         t += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const size_t r = t / in;
        x_out[t] = x[r * in + __ldg(perm + t % in)];
    }
}

// f(std::integral_constant<int, J>) for J = Begin .. End − 1: a loop whose index can be a template argument.
template <int Begin, int End, typename F>
__device__ __forceinline__ void static_for(F&& f) {
    if constexpr (Begin < End) {
        f(std::integral_constant<int, Begin>{});
        static_for<Begin + 1, End>(f);
    }
}

// One output's unit, its words w, as its 32 weights s·(q − z) in fp16, in order (v's half2 j: codes 2j, 2j + 1): one
// HFMA2 makes the exact q − z from a pair's bits, one HMUL2 rounds s·(q − z) once (a product exact in F32, so the
// same fp16 as computing it in F32 and rounding).
template <int Bits>
__device__ __forceinline__ void dequant_pairs(uint4 (&v)[4], const uint32_t (&w)[Bits], float s, float z) {
    const __half2 s2 = __float2half2_rn(s);
    uint32_t* out = reinterpret_cast<uint32_t*>(v);
    static_for<0, 16>([&](auto pair) {
        constexpr int j = decltype(pair)::value, e = pair_exponent<Bits, j>();
        const __half2 q = __hfma2(as_half2(pair_bits<Bits, j>(w)), __float2half2_rn(1.0f / (1 << e)),
                                  __float2half2_rn(-(1024.0f / (1 << e) + z)));  // exactly q − z
        const __half2 r = __hmul2(q, s2);
        out[j] = *reinterpret_cast<const uint32_t*>(&r);
    });
}

// weight[o, perm[32u + j]] = s · (q − z) in fp16 (dequant_pairs). A thread per unit and output quad (adjacent
// threads: adjacent quads); without perm it writes 32 consecutive halves (four 128-bit stores) in each of its 4 output
// rows, with perm 32 scattered halves (done once per weight at load).
template <int Bits>
__device__ __forceinline__ void dequant_unit(__half* __restrict__ weight, const QMatrix& m, const int* __restrict__ perm,
                                             int u, int2 d, int o) {
    uint32_t w[4][Bits];
    float s[4], z[4];
    load_unit<Bits>(w, m.qweight + static_cast<size_t>(d.x) * m.out + o, m.out);
    load_group<Bits>(s, z, m, d.y >> 8, o);
#pragma unroll
    for (int c = 0; c < 4; c++) {
        __half* row = weight + static_cast<size_t>(o + c) * m.in;
        uint4 v[4];
        dequant_pairs<Bits>(v, w[c], s[c], z[c]);
        if (perm == nullptr) {
#pragma unroll
            for (int k = 0; k < 4; k++) reinterpret_cast<uint4*>(row + u * 32)[k] = v[k];
        } else {
            const __half* h = reinterpret_cast<const __half*>(v);
#pragma unroll
            for (int j = 0; j < 32; j++) row[__ldg(perm + u * 32 + j)] = h[j];
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

// One output's unit from GPTQ's and EXL2's packing (a little-endian stream of 32 `Bits`-bit fields over the `Bits`
// words, field j at bit j·Bits) into the pair packing, in place: the words at rows row0 .. row0 + Bits − 1, column o.
template <int Bits>
__device__ __forceinline__ void pack_unit_in_place(uint32_t* __restrict__ qweight, int out, int row0, int o) {
    uint32_t w[Bits + 1];
#pragma unroll
    for (int k = 0; k < Bits; k++) w[k] = qweight[static_cast<size_t>(row0 + k) * out + o];
    w[Bits] = 0;
    int c[32];
#pragma unroll
    for (int j = 0; j < 32; j++) {
        const int bit = j * Bits, word = bit >> 5, shift = bit & 31;
        const uint64_t v = (static_cast<uint64_t>(w[word + 1]) << 32 | w[word]) >> shift;
        c[j] = static_cast<int>(v & ((1u << Bits) - 1));
    }
    uint32_t p[Bits];
    pack_pairs<Bits>(p, c);
#pragma unroll
    for (int k = 0; k < Bits; k++) qweight[static_cast<size_t>(row0 + k) * out + o] = p[k];
}

__global__ void qmatrix_prepare(uint32_t* __restrict__ qweight, const int2* __restrict__ units, int in, int out) {
    const size_t t = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
    if (t >= static_cast<size_t>(out) * (in / 32)) return;
    const int o = static_cast<int>(t % out), u = static_cast<int>(t / out);
    const int2 d = __ldg(units + u);
    switch (d.y & 0xff) {
        case 2: pack_unit_in_place<2>(qweight, out, d.x, o); break;
        case 3: pack_unit_in_place<3>(qweight, out, d.x, o); break;
        case 4: pack_unit_in_place<4>(qweight, out, d.x, o); break;
        case 5: pack_unit_in_place<5>(qweight, out, d.x, o); break;
        case 6: pack_unit_in_place<6>(qweight, out, d.x, o); break;
        default: pack_unit_in_place<8>(qweight, out, d.x, o); break;
    }
}

// ---- tensor cores, for 9..64 rows (short prompts, small batches) ----
// y^T = W x^T as m16n8k16 products: W's outputs are the m dimension (16 a tile), x's rows the n (8 a tile, up to 8
// tiles), the inputs k. A block of 4 warps takes 128 outputs (32 a warp: two m-tiles) and a range of the units
// (grid.y splits the inputs; the splits of a block's outputs form a thread-block cluster that sums through distributed
// shared memory, so y is written once, in any dtype, with no atomics or memset). Per stage, cp.async brings two units'
// qweight rows of the 128 outputs (512 contiguous bytes a row), their scales and zeros, and x's 64 columns of every row
// into shared memory, three stages in flight; the split's unit descriptors are read once, up front. Each lane then
// takes one output's unit: its `bits` words decode (pair_bits: one LOP3 a pair) and dequantize to s·(q − z) in half2
// (one HFMA2 makes the exact q − z, one HMUL2 scales it: the one rounding qt_qmatrix_dequant makes, so the products
// equal dequantize-then-cuBLAS up to summation order), into the warp's 32 × 64 A tile; ldmatrix feeds A and x
// fragments to the products, FP32 accumulation throughout.
// Measured 2026-11-23 (H100 SXM; µs, 4-bit GPTQ g128, test_kernels --bench qmatrix): 4096→11008 at 4 / 8 / 16 / 64
// rows 30.3 / 30.5 / 33.6 / 48.5 (the CUDA-core GEMV at 4 and 8: 19.7 / 34.0), 11008→4096 38.8 / 39.1 / 42.5 / 59.4
// (GEMV 23.0 / 29.7), 4096→4096 17.4 / 17.5 / 19.6 / 28.0 (GEMV 9.8 / 12.2); dequantize + cuBLAS, which it replaces
// above 8 rows, takes 52–178 µs on these shapes (QuantBench). Its time grows with the steps a block walks, ~1.4 µs a
// step whatever the bytes (without splits 4096→4096 at 4 rows takes 90.6 µs: 64 steps), so it is bound by the latency
// of a step's dequantize → shared store → ldmatrix → mma chain at 3–4 blocks an SM, not by bandwidth; 4 stages in
// flight instead of 3 (fewer blocks an SM) changed 4 rows by < 10 % and slowed 64 rows by 50 %.
constexpr int kMaxGemmRows = 64;
constexpr int kGemmWarps = 4;
constexpr int kGemmOutputs = 32 * kGemmWarps;  // 128 outputs a block, a lane each
constexpr int kGemmStageUnits = 2;             // 64 inputs a stage
constexpr int kGemmStages = 3;
constexpr int kMaxGemmSplits = 8;              // a portable cluster
constexpr size_t kMaxGemmSmem = 200 << 10;     // dynamic shared memory a block may take (an H100 SM has 227 KB)
constexpr int kGemmStride = 32 * kGemmStageUnits + 8;  // halves a row of x, and of a warp's A tile, in shared memory:
                                                       // 144 bytes, so the 8 rows of an ldmatrix read start in 8
                                                       // different bank groups

// A stage in shared memory: the units' qweight rows of the block's 128 outputs (up to 8 a unit), their scales and
// zeros (a row of 128 halves a unit), and x's 64 columns of 8·NT rows.
template <int NT>  // n-tiles: rows up to 8·NT
struct GemmStage {
    uint32_t words[8 * kGemmStageUnits][kGemmOutputs];
    __half scales[kGemmStageUnits][kGemmOutputs], zeros[kGemmStageUnits][kGemmOutputs];
    __align__(16) __half x[8 * NT][kGemmStride];
};

template <int NT>
struct GemmSmem {
    GemmStage<NT> stage[kGemmStages];
    __half a[kGemmWarps][32][kGemmStride];  // each warp's dequantized outputs × the stage's 64 inputs
    static constexpr int kPartialStride = kGemmOutputs + 4;  // floats a row of the cluster sum (bank spread), which
                                                             // reuses the stages
    static_assert(size_t(8) * NT * kPartialStride * 4 <= sizeof(stage), "the cluster sum fits the stages");
    // then the split's unit descriptors (int2 each), read once at the start: no stage waits on a load of its own
};

// A lane's output of one unit as its 16 weight pairs (dequant_pairs), from its `Bits` words (stage rows, 128 words
// apart).
template <int Bits>
__device__ __forceinline__ void dequant_lane(uint4 (&a)[4], const uint32_t* __restrict__ words, float s, float z) {
    uint32_t w[Bits];
#pragma unroll
    for (int k = 0; k < Bits; k++) w[k] = words[k * kGemmOutputs];
    dequant_pairs<Bits>(a, w, s, z);
}

// y[r, o] (+)= Σ_i x[r, i] · W[o, i] for r < rows ≤ 8·NT: the block's 128 outputs (blockIdx.x), its split's units
// (blockIdx.y of gridDim.y, a cluster when more than one).
template <int NT>
__global__ void __launch_bounds__(32 * kGemmWarps) qmatrix_gemm(QMatrix m, void* __restrict__ y, bool y_f16,
                                                                 bool accumulate, const __half* __restrict__ x, int rows) {
    extern __shared__ __align__(16) unsigned char smem_bytes[];
    GemmSmem<NT>& smem = *reinterpret_cast<GemmSmem<NT>*>(smem_bytes);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const int ob = blockIdx.x * kGemmOutputs, units = m.in / 32;
    const int begin = blockIdx.y * units / gridDim.y, end = (blockIdx.y + 1) * units / gridDim.y;
    const int steps = (end - begin + kGemmStageUnits - 1) / kGemmStageUnits;
    int2* descriptors = reinterpret_cast<int2*>(smem_bytes + sizeof(GemmSmem<NT>));  // units begin .. end − 1
    for (int u = begin + threadIdx.x; u < end; u += blockDim.x) descriptors[u - begin] = __ldg(m.units + u);
    __syncthreads();

    // Stage `step`: units begin + 2·step (and the next, when in range), by 16-byte async copies.
    auto load_stage = [&](int step) {
        if (step < steps) {
            GemmStage<NT>& st = smem.stage[step % kGemmStages];
            const int u0 = begin + step * kGemmStageUnits, n = min(kGemmStageUnits, end - u0);
            int word_row = 0;
            for (int j = 0; j < n; j++) {  // unit j's rows follow unit j − 1's
                const int2 d = descriptors[u0 + j - begin];
                const int bits = d.y & 0xff, group = d.y >> 8;
                for (int i = threadIdx.x; i < bits * (kGemmOutputs / 4); i += blockDim.x) {
                    const int r = i / (kGemmOutputs / 4), col = (i % (kGemmOutputs / 4)) * 4;
                    const bool valid = ob + col < m.out;
                    copy16(&st.words[word_row + r][col],
                           valid ? m.qweight + static_cast<size_t>(d.x + r) * m.out + ob + col : m.qweight, valid);
                }
                word_row += bits;
                for (int i = threadIdx.x; i < 2 * (kGemmOutputs / 8); i += blockDim.x) {  // scales, then zeros
                    const bool zeros = i >= kGemmOutputs / 8;
                    const int col = (i % (kGemmOutputs / 8)) * 8;
                    const __half* src = zeros ? m.zeros : m.scales;
                    const bool valid = src != nullptr && ob + col < m.out;
                    copy16(zeros ? &st.zeros[j][col] : &st.scales[j][col],
                           valid ? src + static_cast<size_t>(group) * m.out + ob + col : m.scales, valid);
                }
            }
            for (int i = threadIdx.x; i < 8 * NT * 8; i += blockDim.x) {  // 8 pieces of 8 inputs a row
                const int r = i / 8, piece = i % 8;
                const bool valid = r < rows && piece < 4 * n;
                copy16(&st.x[r][piece * 8], valid ? x + static_cast<size_t>(r) * m.in + u0 * 32 + piece * 8 : x, valid);
            }
        }
        commit_copies();  // an empty group past the last step keeps the wait counts uniform
    };

    float acc[2][NT][4] = {};
#pragma unroll
    for (int st = 0; st < kGemmStages - 1; st++) load_stage(st);
    __half (*a_tile)[kGemmStride] = smem.a[warp];
    for (int step = 0; step < steps; step++) {
        wait_copies<kGemmStages - 2>();
        __syncthreads();  // the stage is in for every thread; the one the next load overwrites is consumed
        load_stage(step + kGemmStages - 1);
        const GemmStage<NT>& st = smem.stage[step % kGemmStages];
        const int n = min(kGemmStageUnits, end - (begin + step * kGemmStageUnits)), col = warp * 32 + lane;
        uint4 a[kGemmStageUnits][4] = {};
        int word_row = 0;
#pragma unroll
        for (int j = 0; j < kGemmStageUnits; j++) {
            if (j >= n) break;
            const int bits = descriptors[begin + step * kGemmStageUnits + j - begin].y & 0xff;
            const float s = __half2float(st.scales[j][col]);
            const float z = m.zeros != nullptr ? __half2float(st.zeros[j][col]) : static_cast<float>(1 << (bits - 1));
            const uint32_t* words = &st.words[word_row][col];
            switch (bits) {
                case 2: dequant_lane<2>(a[j], words, s, z); break;
                case 3: dequant_lane<3>(a[j], words, s, z); break;
                case 4: dequant_lane<4>(a[j], words, s, z); break;
                case 5: dequant_lane<5>(a[j], words, s, z); break;
                case 6: dequant_lane<6>(a[j], words, s, z); break;
                default: dequant_lane<8>(a[j], words, s, z); break;
            }
            word_row += bits;
        }
        __syncwarp();  // the last step's fragments are read from the A tile
#pragma unroll
        for (int j = 0; j < kGemmStageUnits; j++)
#pragma unroll
            for (int k = 0; k < 4; k++) reinterpret_cast<uint4*>(&a_tile[lane][32 * j])[k] = a[j][k];
        __syncwarp();
#pragma unroll
        for (int j = 0; j < kGemmStageUnits; j++) {
            if (j >= n) break;
            uint32_t af[2][2][4];  // [m-tile][k-step]: outputs 16·mt + lane % 16, inputs 32j + 16·ks + 8·(lane / 16)
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int ks = 0; ks < 2; ks++) ldsm_x4(af[mt][ks], &a_tile[16 * mt + (lane & 15)][32 * j + 16 * ks + 8 * (lane >> 4)]);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                uint32_t bf[4];  // rows 8t + lane % 8, inputs 32j + 8·(lane / 8): k-step 0 in bf[0..1], 1 in bf[2..3]
                ldsm_x4(bf, &st.x[8 * t + (lane & 7)][32 * j + 8 * (lane >> 3)]);
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    mma_f16(acc[mt][t], af[mt][0], bf[0], bf[1]);
                    mma_f16(acc[mt][t], af[mt][1], bf[2], bf[3]);
                }
            }
        }
    }
    wait_copies<0>();
    __syncthreads();  // every stage consumed: the cluster sum may reuse them

    // acc[mt][t]: outputs 32·warp + 16·mt + g (+8 for [2], [3]), rows 8t + 2c (+1 for [1], [3]).
    auto store = [&](int r, int col, float v) {
        const int o = ob + col;
        if (r >= rows || o >= m.out) return;
        const size_t at = static_cast<size_t>(r) * m.out + o;
        if (y_f16) static_cast<__half*>(y)[at] = __float2half_rn(v);
        else if (accumulate) static_cast<float*>(y)[at] += v;
        else static_cast<float*>(y)[at] = v;
    };
    auto each_sum = [&](auto&& f) {  // f(row, column of the block, acc value) for each of this lane's sums
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int t = 0; t < NT; t++)
#pragma unroll
                for (int i = 0; i < 4; i++) f(8 * t + 2 * c + (i & 1), warp * 32 + 16 * mt + g + 8 * (i >> 1), acc[mt][t][i]);
    };
    if (gridDim.y == 1) {
        each_sum(store);
        return;
    }
    float* partial = reinterpret_cast<float*>(smem_bytes);  // [8·NT rows][128 outputs], over the stages
    each_sum([&](int r, int col, float v) { partial[r * GemmSmem<NT>::kPartialStride + col] = v; });
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();  // every split's partial sums are in
    const int splits = gridDim.y, rank = blockIdx.y, count = min(rows, 8 * NT) * kGemmOutputs;
    for (int i = rank * count / splits + threadIdx.x; i < (rank + 1) * count / splits; i += blockDim.x) {
        const int r = i / kGemmOutputs, col = i % kGemmOutputs;
        float v = 0.0f;
        for (int k = 0; k < splits; k++) v += cluster.map_shared_rank(partial, k)[r * GemmSmem<NT>::kPartialStride + col];
        store(r, col, v);
    }
    cluster.sync();  // no block leaves while another still reads its partial sums
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
    const int ub = w->uniform_bits;
    QT_REQUIRE(ub == 0 || ((ub >= 2 && ub <= 6) || ub == 8) && w->qrows == ub * (w->in / 32),
               "%s: uniform_bits %d with %d qweight rows for %d inputs (need 0, or 2..6 or 8 and bits rows per 32 inputs)",
               fn, ub, w->qrows, w->in);
    QT_REQUIRE(aligned(w->qweight, 16), "%s: qweight is not 16-byte aligned", fn);
    QT_REQUIRE(aligned(w->units, 8) && aligned(w->scales, 8) && aligned(w->zeros, 8) && aligned(w->perm, 4),
               "%s: units, scales or zeros not 8-byte aligned, or perm not 4-byte aligned", fn);
    return QT_OK;
}

QMatrix device_view(const qt_qmatrix* w) {
    return QMatrix{static_cast<const uint32_t*>(w->qweight), static_cast<const int2*>(w->units),
                   static_cast<const __half*>(w->scales), static_cast<const __half*>(w->zeros), w->in, w->out};
}

constexpr int kMaxSplits = 4;

// Blocks of `threads` threads an SM holds for qmatrix_gemv<Rows> (registers decide), asked once per kernel and size.
template <int Rows>
int gemv_blocks_per_sm(int threads) {
    static int cached[2] = {0, 0};
    int& n = cached[threads == kMaxThreads];
    if (n == 0 && (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, qmatrix_gemv<Rows>, threads, 0) != cudaSuccess || n < 1))
        n = 1;
    return n;
}

// Launches qmatrix_gemv<Rows> over every part of the set. A block has 8 warps while the grid fits one wave of such
// blocks, else 4: the same threads an SM, but twice the blocks a wave, so that 688 blocks (4096 → 11008) run as one
// wave instead of one and a part-filled second (GPTQ-4 4096 → 11008: 14.2 → 13.0 µs; q/k/v in one launch 21.4 →
// 17.1 µs; outputs of 4096, already under a wave, lose with 4: 6.5 → 8.0 µs). With split (F32 y only), the inputs
// go over up to kMaxSplits blocks while the grid is under 2 waves and every slice keeps at least one unit; each y is
// zeroed first unless accumulating.
template <int Rows>
int launch_gemv(const QMatrixSet& set, bool f16, bool accumulate, const __half* x, int rows, bool split,
                cudaStream_t s) {
    const auto kernel = qmatrix_gemv<Rows>;
    const int blocks = set.block_end[set.parts - 1];
    int warps = forced_gemv_warps();
    if (warps == 0) warps = blocks > multiprocessor_count() * gemv_blocks_per_sm<Rows>(kMaxThreads) ? 4 : 8;
    const int threads = 32 * warps;
    int splits = 1;
    if (split && !f16) {
        const int wave = multiprocessor_count() * gemv_blocks_per_sm<Rows>(threads), slices = warps * kSlicesPerWarp,
                  units = set.m[0].in / 32;
        while (splits < kMaxSplits && blocks * splits < 2 * wave && units / (splits + 1) >= slices) splits++;
        if (splits > 1 && !accumulate)
            for (int p = 0; p < set.parts; p++)
                QT_CUDA_TRY(cudaMemsetAsync(set.y[p], 0, static_cast<size_t>(rows) * set.m[p].out * sizeof(float), s));
    }
    if (splits > 1 && !accumulate)  // after a memset: an ordinary launch
        kernel<<<dim3(blocks, splits), threads, 0, s>>>(set, f16, accumulate, x, rows);
    else
        QT_CUDA_TRY(launch_dependent(kernel, dim3(blocks, splits), threads, 0, s, set, f16, accumulate, x, rows));
    return check_launch("qmatrix_gemv");
}

// Rows up to which qt_qmatrix_gemv takes the CUDA-core GEMV; more go to the tensor cores. QTOOL_QMATRIX_GEMV_ROWS
// (1..8) overrides it, for measurements.
int gemv_max_rows() {
    static const int max_rows = [] {
        const char* e = getenv("QTOOL_QMATRIX_GEMV_ROWS");
        const int v = e != nullptr ? atoi(e) : 0;
        return v >= 1 && v <= kMaxGemvRows ? v : kDefaultGemvRows;
    }();
    return max_rows;
}

// Launches qmatrix_gemm<NT> for one matrix. The inputs split over up to kMaxGemmSplits blocks (one cluster) until
// the grid holds about two blocks an SM: 4096 outputs are 32 blocks of 128.
template <int NT>
int launch_gemm(const QMatrix& m, void* y, bool f16, bool accumulate, const __half* x, int rows, cudaStream_t s) {
    const auto kernel = qmatrix_gemm<NT>;
    const int blocks = (m.out + kGemmOutputs - 1) / kGemmOutputs, units = m.in / 32;
    const int splits = std::max(1, std::min({kMaxGemmSplits, (2 * multiprocessor_count() + blocks - 1) / blocks,
                                             units / kGemmStageUnits}));
    const size_t smem = sizeof(GemmSmem<NT>) + sizeof(int2) * ((units + splits - 1) / splits);
    QT_REQUIRE(smem <= kMaxGemmSmem, "qt_qmatrix_gemv: %d inputs need %zu bytes of shared memory for %d rows (at most %zu)",
               m.in, smem, 8 * NT, kMaxGemmSmem);
    static const cudaError_t opted = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxGemmSmem);
    QT_CUDA_TRY(opted);
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(blocks, splits);
    config.blockDim = dim3(32 * kGemmWarps);
    config.dynamicSmemBytes = smem;
    config.stream = s;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeClusterDimension;
    attribute[0].val.clusterDim.x = 1;
    attribute[0].val.clusterDim.y = splits;
    attribute[0].val.clusterDim.z = 1;
    config.attrs = attribute;
    config.numAttrs = splits > 1 ? 1 : 0;
    QT_CUDA_TRY(cudaLaunchKernelEx(&config, kernel, m, y, f16, accumulate, x, rows));
    return check_launch("qmatrix_gemm");
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_qmatrix_gemv_scratch_bytes(const qt_qmatrix* w, int rows, size_t* bytes) {
    QT_TRY(check_qmatrix("qt_qmatrix_gemv_scratch_bytes", w));
    QT_REQUIRE(bytes != nullptr, "qt_qmatrix_gemv_scratch_bytes: NULL bytes");
    QT_REQUIRE(rows >= 1 && rows <= kMaxGemmRows, "qt_qmatrix_gemv_scratch_bytes: rows %d (need 1..%d)", rows,
               kMaxGemmRows);
    *bytes = w->perm != nullptr ? static_cast<size_t>(rows) * w->in * sizeof(__half) : 0;
    return QT_OK;
}

int qt_qmatrix_gemv(void* y, int y_dtype, int accumulate, const void* x, const qt_qmatrix* w, int rows, void* scratch,
                    size_t scratch_bytes, void* stream) {
    return qt_qmatrix_gemv_many(1, &y, y_dtype, accumulate, x, w, rows, scratch, scratch_bytes, stream);
}

int qt_qmatrix_gemv_many(int count, void* const* y, int y_dtype, int accumulate, const void* x, const qt_qmatrix* w,
                         int rows, void* scratch, size_t scratch_bytes, void* stream) {
    const char* fn = "qt_qmatrix_gemv";
    QT_REQUIRE(count >= 1 && count <= kMaxParts, "%s: %d matrices (need 1..%d)", fn, count, kMaxParts);
    QT_REQUIRE(y != nullptr && w != nullptr, "%s: NULL y or matrix array", fn);
    QT_REQUIRE(x != nullptr, "%s: NULL x", fn);
    QT_REQUIRE(rows >= 1 && rows <= kMaxGemmRows, "%s: rows %d (need 1..%d)", fn, rows, kMaxGemmRows);
    QT_REQUIRE(y_dtype == QT_F32 || y_dtype == QT_F16, "%s: y dtype %s (need F32 or F16)", fn, dtype_name(y_dtype));
    QT_REQUIRE(!accumulate || y_dtype == QT_F32, "%s: accumulate needs F32 y (y is %s)", fn, dtype_name(y_dtype));
    QT_REQUIRE(aligned16(x), "%s: x is not 16-byte aligned", fn);
    QMatrixSet set{};
    bool mixed = false;
    for (int p = 0; p < count; p++) {
        QT_TRY(check_qmatrix(fn, &w[p]));
        QT_REQUIRE(y[p] != nullptr, "%s: NULL y of matrix %d", fn, p);
        QT_REQUIRE(w[p].in == w[0].in && (w[p].perm == nullptr) == (w[0].perm == nullptr),
                   "%s: matrix %d takes %d inputs%s, matrix 0 %d%s (one x serves them all)", fn, p, w[p].in,
                   w[p].perm ? " with a perm" : "", w[0].in, w[0].perm ? " with a perm" : "");
        set.m[p] = device_view(&w[p]);
        set.y[p] = y[p];
        set.block_end[p] = (p > 0 ? set.block_end[p - 1] : 0) + (w[p].out + kOutputsPerBlock - 1) / kOutputsPerBlock;
        mixed |= w[p].uniform_bits == 0;
    }
    set.parts = count;
    const cudaStream_t s = as_stream(stream);
    const auto* xp = static_cast<const __half*>(x);
    if (w[0].perm != nullptr) {
        const size_t need = static_cast<size_t>(rows) * w[0].in * sizeof(__half);
        QT_REQUIRE(scratch != nullptr && scratch_bytes >= need, "%s: scratch of %zu bytes for a perm (need %zu)", fn,
                   scratch != nullptr ? scratch_bytes : 0, need);
        QT_REQUIRE(aligned16(scratch), "%s: scratch is not 16-byte aligned", fn);
        auto* gathered = static_cast<__half*>(scratch);
        const unsigned blocks = blocks_for(static_cast<size_t>(rows) * w[0].in, 256, 4096);
        QT_CUDA_TRY(launch_dependent(gather_columns, blocks, 256, 0, s, gathered, xp,
                                     static_cast<const int*>(w[0].perm), rows, w[0].in));
        QT_TRY(check_launch("gather_columns"));
        xp = gathered;
    }
    const bool f16 = y_dtype == QT_F16, acc = accumulate != 0;
    if (rows > gemv_max_rows()) {  // tensor cores, a launch per matrix
        const int nt = rows <= 8 ? 1 : rows <= 16 ? 2 : rows <= 32 ? 4 : 8;
        for (int p = 0; p < count; p++) {
            QT_TRY(nt == 1   ? launch_gemm<1>(set.m[p], y[p], f16, acc, xp, rows, s)
                   : nt == 2 ? launch_gemm<2>(set.m[p], y[p], f16, acc, xp, rows, s)
                   : nt == 4 ? launch_gemm<4>(set.m[p], y[p], f16, acc, xp, rows, s)
                             : launch_gemm<8>(set.m[p], y[p], f16, acc, xp, rows, s));
        }
        return QT_OK;
    }
    // Mixed widths (EXL2) split the inputs over blocks; one width (GPTQ) measured faster unsplit (header).
    if (rows == 1) return launch_gemv<1>(set, f16, acc, xp, rows, mixed, s);
    if (rows == 2) return launch_gemv<2>(set, f16, acc, xp, rows, mixed, s);
    if (rows <= 4) return launch_gemv<4>(set, f16, acc, xp, rows, mixed, s);
    return launch_gemv<8>(set, f16, acc, xp, rows, mixed, s);
}

int qt_gather_columns(void* out, const void* x, const int32_t* perm, int rows, int cols, void* stream) {
    QT_REQUIRE(out && x && perm, "qt_gather_columns: NULL out, x or perm");
    QT_REQUIRE(rows >= 0 && cols > 0, "qt_gather_columns: rows %d, cols %d", rows, cols);
    QT_REQUIRE(out != x, "qt_gather_columns: out and x must not overlap");
    if (rows == 0) return QT_OK;
    gather_columns<<<blocks_for(static_cast<size_t>(rows) * cols, 256, 4096), 256, 0, as_stream(stream)>>>(
        static_cast<__half*>(out), static_cast<const __half*>(x), perm, rows, cols);
    return check_launch("gather_columns");
}

int qt_qmatrix_prepare(const qt_qmatrix* w, void* stream) {
    QT_TRY(check_qmatrix("qt_qmatrix_prepare", w));
    const size_t threads = static_cast<size_t>(w->out) * (w->in / 32);
    qmatrix_prepare<<<static_cast<unsigned>((threads + 255) / 256), 256, 0, as_stream(stream)>>>(
        static_cast<uint32_t*>(const_cast<void*>(w->qweight)), static_cast<const int2*>(w->units), w->in, w->out);
    return check_launch("qmatrix_prepare");
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
