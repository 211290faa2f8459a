/*
 * qtool.h: the whole native surface of libqtool.so, a C ABI over CUDA kernels and cuBLAS/cuSOLVER.
 *
 * Java reaches it through jextract-generated bindings (package qtool.ffi, class qtool_h); the C++ test
 * native/test/test_kernels.cu uses it directly. Keep it plain C: no C++ types, no CUDA headers.
 *
 * Conventions
 *  - Every function returns a status (enum qt_status, as int); 0 is success. On failure,
 *    qt_last_error() returns a detail message for the calling thread (which call failed and why, e.g.
 *    the CUDA error text). The message is kept until the next failure on that thread.
 *  - Device memory is passed as void*; the library never dereferences such a pointer on the host.
 *  - Streams: every call that queues device work takes a `void* stream` (a cudaStream_t from
 *    qt_stream_create); NULL means the legacy default stream. Work queued on one stream runs in order.
 *    Functions named *_async return once the work is queued; the others wait for it.
 *  - Kernels work on the current device (qt_set_device), like the CUDA runtime.
 *  - Tensors are dense and row-major. Weights are F32, F16 or BF16 (enum qt_dtype). Activations are F32, or
 *    F16/BF16 where a kernel takes a dtype (the fp16 path keeps only the residual stream in F32); sums
 *    accumulate in F32. Shapes follow qtool.backend.Backend, whose Javadoc is the reference.
 *  - Thread safety: calls may come from several threads; the cuBLAS and cuSOLVER handles are shared per
 *    device and guarded by a lock.
 */
#ifndef QTOOL_H
#define QTOOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define QT_API __attribute__((visibility("default")))
#else
#define QT_API
#endif

/* Return codes of every qt_ function. */
enum qt_status {
    QT_OK = 0,
    QT_ERR_INVALID_ARGUMENT = 1, /* a null pointer, a bad size or dtype, misaligned memory */
    QT_ERR_NOT_INITIALIZED = 2,  /* qt_init has not succeeded yet (cuBLAS/cuSOLVER calls need it) */
    QT_ERR_NO_DEVICE = 3,        /* no usable GPU: no driver, driver too old (CUDA error 35), no device */
    QT_ERR_LIBRARY_NOT_FOUND = 4,/* cuBLAS or cuSOLVER could not be loaded or lacks a symbol */
    QT_ERR_OUT_OF_MEMORY = 5,    /* device or pinned host allocation failed */
    QT_ERR_CUDA = 6,             /* any other CUDA runtime error (launch failure, illegal address, ...) */
    QT_ERR_CUBLAS = 7,           /* a cuBLAS call failed */
    QT_ERR_CUSOLVER = 8,         /* a cuSOLVER call failed */
    QT_ERR_UNSUPPORTED = 9,      /* valid request this build does not handle (e.g. head_dim > 256) */
    QT_ERR_NOT_POSITIVE_DEFINITE = 10 /* qt_cholesky: the matrix is not positive definite (see its info) */
};

/* Element types of tensors, as codes passed to kernels. */
enum qt_dtype {
    QT_F32 = 0,
    QT_F16 = 1,
    QT_BF16 = 2,
    QT_I32 = 3,
    QT_F64 = 4 /* accepted as a source of qt_cast only */
};

/* Which triangle of a row-major symmetric matrix a factorization reads and writes. */
enum qt_triangle {
    QT_LOWER = 0,
    QT_UPPER = 1
};

/* Libraries that qt_init loads at run time (argument of qt_loaded_library). */
enum qt_library {
    QT_LIB_CUBLASLT = 0,
    QT_LIB_CUBLAS = 1,
    QT_LIB_CUSOLVER = 2
};

typedef struct qt_device_info {
    char name[256];
    size_t total_memory_bytes;
    size_t free_memory_bytes;
    int multiprocessor_count;
    int compute_capability_major;
    int compute_capability_minor;
    int memory_clock_khz;        /* peak memory clock */
    int memory_bus_width_bits;
    int l2_cache_bytes;
    int shared_memory_per_block_optin_bytes; /* the most a kernel may ask for after opting in */
} qt_device_info;

/* ---- Status and errors ---------------------------------------------------------------------------- */

/* Short fixed name of a status code, e.g. "QT_ERR_CUDA". Never NULL. */
QT_API const char* qt_status_string(int status);
/* Detail of the last failure on the calling thread ("" if none). Valid until the thread's next failure. */
QT_API const char* qt_last_error(void);
/* Does nothing and returns QT_OK: measures the cost of a call from Java. */
QT_API int qt_noop(void);
/* Version of this library as major * 10000 + minor * 100 + patch. */
QT_API int qt_version(int* version);

/* ---- Initialization and devices ------------------------------------------------------------------- */

/*
 * Checks that a GPU answers and loads cuBLAS (libcublasLt.so.13, then libcublas.so.13) and, if present,
 * cuSOLVER (libcusolver.so.12 or .13, with the libraries it needs). cuda_lib_dirs is a ':'-separated
 * list of directories searched first, in order; NULL or "" searches only the default places (the
 * dynamic loader's path, /usr/local/cuda/lib64, /usr/local/cuda/targets/x86_64-linux/lib). Fails with
 * QT_ERR_NO_DEVICE when no GPU answers and QT_ERR_LIBRARY_NOT_FOUND when cuBLAS is missing (the message
 * lists the places tried). A missing cuSOLVER is not an error here: qt_cholesky then fails.
 * Calling it again after success does nothing. Kernels other than qt_linear and the qt_cholesky family
 * work without it.
 */
QT_API int qt_init(const char* cuda_lib_dirs);
/* Full path of a library qt_init loaded (enum qt_library), or NULL if it is not loaded. */
QT_API const char* qt_loaded_library(int library);
QT_API int qt_device_count(int* count);
QT_API int qt_set_device(int device);
QT_API int qt_get_device(int* device);
QT_API int qt_device_info_get(int device, qt_device_info* info);
/* Waits for all work on the current device. */
QT_API int qt_device_synchronize(void);

/* ---- Memory --------------------------------------------------------------------------------------- */

/* Device allocation; *ptr is 256-byte aligned. bytes == 0 gives *ptr == NULL. */
QT_API int qt_malloc(void** ptr, size_t bytes);
QT_API int qt_free(void* ptr); /* NULL is fine */
/* Sets bytes to value (the low 8 bits), queued on stream. */
QT_API int qt_memset_async(void* ptr, int value, size_t bytes, void* stream);
/* Copies queued on stream; the non-async forms wait for the copy (and everything before it on stream). */
QT_API int qt_memcpy_htod(void* dst, const void* src, size_t bytes, void* stream);
QT_API int qt_memcpy_dtoh(void* dst, const void* src, size_t bytes, void* stream);
QT_API int qt_memcpy_dtod(void* dst, const void* src, size_t bytes, void* stream);
/* Async host copies are only truly asynchronous with pinned host memory (qt_host_alloc_pinned). */
QT_API int qt_memcpy_htod_async(void* dst, const void* src, size_t bytes, void* stream);
QT_API int qt_memcpy_dtoh_async(void* dst, const void* src, size_t bytes, void* stream);
QT_API int qt_memcpy_dtod_async(void* dst, const void* src, size_t bytes, void* stream);
/* Page-locked host memory, for fast and asynchronous transfers. */
QT_API int qt_host_alloc_pinned(void** ptr, size_t bytes);
QT_API int qt_host_free_pinned(void* ptr);

/* ---- Streams and events --------------------------------------------------------------------------- */

/* A stream that does not synchronize with the legacy default stream (cudaStreamNonBlocking). */
QT_API int qt_stream_create(void** stream);
QT_API int qt_stream_destroy(void* stream);
QT_API int qt_stream_synchronize(void* stream);
/* Events carry timing. */
QT_API int qt_event_create(void** event);
QT_API int qt_event_destroy(void* event);
QT_API int qt_event_record(void* event, void* stream);
QT_API int qt_event_synchronize(void* event);
/* Milliseconds between two recorded, completed events. */
QT_API int qt_event_elapsed_ms(void* start, void* end, float* ms);

/* ---- Benchmarks ------------------------------------------------------------------------------------ */

/*
 * Device-to-device copy bandwidth: copies `bytes` between two fresh buffers `iters` times (after a
 * warm-up), timed with CUDA events; *gbps = 2 * bytes * iters / seconds / 1e9 (bytes read + written).
 */
QT_API int qt_bench_copy(size_t bytes, int iters, float* gbps);

/* ---- Kernels: conversions and elementwise ---------------------------------------------------------- */

/* dst[i] = (dst_dtype) src[i] for i < n. Float dtypes only (F64 as a source only); round to nearest even.
 * Equal dtypes copy. dst and src must not overlap unless they are the same pointer with equal dtypes. */
QT_API int qt_cast(void* dst, int dst_dtype, const void* src, int src_dtype, size_t n, void* stream);

/* out[r, :] = (F32) table[ids[r], :]; table [vocab, dim] in F32/F16/BF16, ids I32 [rows].
 * An id outside [0, vocab) gives a row of NaN. */
QT_API int qt_embedding(void* out, const void* table, int table_dtype, const void* ids,
                        int rows, int dim, int vocab, void* stream);

/* out = silu(gate) * up, n elements, all three of `dtype` (F32, F16 or BF16; computed in F32, rounded once);
 * out may be gate or up. silu(g) = g / (1 + exp(-g)). */
QT_API int qt_silu_mul(void* out, const void* gate, const void* up, int dtype, size_t n, void* stream);

/* x += y, F32, n elements. */
QT_API int qt_add(void* x, const void* y, size_t n, void* stream);

/* out[r] = logsumexp(logits[r, :]) - logits[r, targets[r]]; logits F32 [rows, vocab], targets I32,
 * out F32 [rows]. A target outside [0, vocab) gives NaN. */
QT_API int qt_cross_entropy(void* out, const void* logits, const void* targets, int rows, int vocab,
                            void* stream);

/* ---- Kernels: normalization and rotary embedding -------------------------------------------------- */

/* out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight; x F32 [rows, cols]; out [rows, cols] of
 * out_dtype (F32, or F16/BF16: rounded once, the input of a 16-bit linear); weight [cols] F32/F16/BF16.
 * out may be x when out_dtype is F32. */
QT_API int qt_rmsnorm(void* out, int out_dtype, const void* x, const void* weight, int weight_dtype, int rows,
                      int cols, float eps, void* stream);

/*
 * Rotary embedding in place, HF rotate_half layout: in each head, dimension j < head_dim/2 pairs with
 * j + head_dim/2. x: [rows, heads * head_dim] of `dtype` (F32, F16 or BF16; 16-bit values are rotated in F32
 * and rounded once); row r has position startPos + r % seq_len.
 * angle = (float) position * inv_freq[j], computed in F32 as HF does; cos/sin are full precision.
 * inv_freq: F32 [head_dim / 2] on the device. head_dim must be even.
 */
QT_API int qt_rope(void* x, int dtype, int rows, int heads, int head_dim, int seq_len, int start_pos,
                   const void* inv_freq, void* stream);

/* ---- Kernels: attention --------------------------------------------------------------------------- */

/*
 * Causal grouped-query attention with a KV cache. q, k, v, out and both caches are all of `dtype`:
 *  - F32: FP32 arithmetic throughout (CUDA cores); head_dim % 4 == 0, head_dim <= 256.
 *  - F16 or BF16: tensor cores with 16-bit operands, FP32 accumulation and FP32 softmax (the probabilities are
 *    rounded to 16 bits for the P V product, as flash attention does); head_dim % 8 == 0, head_dim <= 128
 *    (QT_ERR_UNSUPPORTED above).
 *   q:   [batch * seq_len, heads * head_dim]        k, v: [batch * seq_len, kv_heads * head_dim]
 *   k_cache, v_cache: [batch, max_seq, kv_heads * head_dim]
 *   out: [batch * seq_len, heads * head_dim] (must not overlap q, k, v or the caches)
 * Stores k, v at positions [start_pos, start_pos + seq_len) of each sequence's cache, then each query at
 * position p = start_pos + s attends over cache positions [0, p] with scale 1/sqrt(head_dim). Query head h
 * uses kv head h / (heads / kv_heads). Positions below start_pos must hold earlier calls' keys and values.
 * Requires heads % kv_heads == 0, the head_dim limits above, start_pos + seq_len <= max_seq and 16-byte
 * aligned pointers.
 * scratch (may be NULL) holds partial results when few query rows leave the GPU idle (decoding): keys are
 * then split across blocks. qt_attention_scratch_bytes gives the size that enables the split; with less,
 * the kernel runs unsplit (same result, slower for long caches).
 */
QT_API int qt_attention_scratch_bytes(int dtype, int batch, int seq_len, int start_pos, int heads, int kv_heads,
                                      int head_dim, size_t* bytes);
QT_API int qt_attention(void* out, const void* q, const void* k, const void* v, void* k_cache, void* v_cache,
                        int dtype, int batch, int seq_len, int start_pos, int max_seq, int heads, int kv_heads,
                        int head_dim, void* scratch, size_t scratch_bytes, void* stream);

/* ---- Kernels: matrix products (cuBLAS; need qt_init) ---------------------------------------------- */

/*
 * out[r, o] = sum_i x[r, i] * weight[o, i] (+ bias[o]), or with accumulate != 0, out[r, o] += that (the
 * residual add fused into the product). x [rows, in_features], weight [out_features, in_features], bias
 * [out_features] (F32/F16/BF16) or NULL, out [rows, out_features].
 *  - F32 weights: x and out F32; plain FP32 SGEMM (no TF32).
 *  - F16/BF16 weights: a tensor-core product accumulating in F32. x is either of the weight's type, used as
 *    it is, or F32, then rounded to the weight's type in `scratch` (at least qt_linear_scratch_bytes). out is
 *    F32 or of the weight's type (the F32 sum, with the accumulated value, rounded once; a bias is added
 *    after that rounding, by a second kernel).
 * out must not overlap x.
 */
QT_API int qt_linear_scratch_bytes(int rows, int in_features, int x_dtype, int weight_dtype, size_t* bytes);
/* Does cuBLAS's one-time setup for the current device now: creates its handle (otherwise the first qt_linear does)
 * and runs one small product of each weight type on `stream`, then waits. A backend calls it when it opens, so that
 * the first products of a timed run carry no library setup. */
QT_API int qt_linear_prepare(void* stream);
QT_API int qt_linear(void* out, int out_dtype, const void* x, int x_dtype, const void* weight, int weight_dtype,
                     const void* bias, int bias_dtype, int rows, int in_features, int out_features, int accumulate,
                     void* scratch, size_t scratch_bytes, void* stream);

/* ---- Kernels: quantized matrix products (GPTQ and EXL2, straight from packed codes) ---------------- */

/*
 * qt_qmatrix: one quantized linear W [out, in] in the kernels' layout, on the device. qtool.backend.QMatrix builds it
 * at load (one-time reshuffles happen there): from a GPTQ checkpoint (act-order inputs sorted by group and their codes
 * repacked; qzeros unpacked to fp16) or from an EXL2 tensor (its q_weight as stored; the per-group fp16 scales made
 * from q_scale and q_scale_max; q_perm from q_invperm). The struct lives in host memory; its pointers are device memory.
 *
 * Inputs are processed in units of 32 rows: unit u covers processing rows 32u .. 32u + 31, which are the inputs
 * perm[32u + j] (input 32u + j when perm is NULL). units[2u] is the first row of qweight holding the unit's codes and
 * units[2u + 1] = group << 8 | bits (bits 2, 3, 4, 5, 6 or 8). The unit's codes take `bits` consecutive rows of
 * qweight: for each output column o, those rows' words hold one little-endian stream of 32 fields of `bits` bits,
 * field j (processing row 32u + j) at bit j * bits (GPTQ's and EXL2's packing alike), until qt_qmatrix_prepare
 * rearranges each column's words of a unit in place into the packing the kernels read (qgemm.cu, PairPacking). Then
 *     W[o, perm[32u + j]] = scales[g, o] * (q - z),  z = zeros[g, o] if zeros != NULL, else 2^(bits - 1) (EXL2),
 * with g the unit's group. Shapes: qweight U32 [qrows, out] (16-byte aligned), units I32 [in / 32, 2],
 * scales F16 [groups, out], zeros F16 [groups, out] (integers) or NULL, perm I32 [in] or NULL.
 * Requires in % 32 == 0 and out % 8 == 0. uniform_bits: every unit's width when all units have the same one, else 0
 * (either is correct: with 0 and F32 y, qt_qmatrix_gemv splits the inputs over blocks, which pays only for mixed
 * widths, so one-width matrices should say their width).
 */
typedef struct qt_qmatrix {
    const void* qweight;
    const void* units;
    const void* scales;
    const void* zeros;
    const void* perm;
    int in;
    int out;
    int groups;
    int qrows;
    int uniform_bits;
} qt_qmatrix;

/*
 * Rearranges w's qweight in place, once, from the stream packing above into the kernels' own (two codes of a pair 16
 * bits apart, which half2 arithmetic takes at every width). qt_qmatrix_gemv, qt_qmatrix_gemv_many and
 * qt_qmatrix_dequant read a prepared matrix only; preparing one twice scrambles it.
 */
QT_API int qt_qmatrix_prepare(const qt_qmatrix* w, void* stream);
/* Scratch bytes qt_qmatrix_gemv needs for `rows` rows of x (0 when w has no perm: x is read in place). */
QT_API int qt_qmatrix_gemv_scratch_bytes(const qt_qmatrix* w, int rows, size_t* bytes);
/*
 * y [rows, out] = x [rows, in] . W^T for rows 1..64 straight from the packed codes, sums in F32: a CUDA-core GEMV up to
 * 8 rows (decoding), tensor cores above (short prompts; the weights rounded to fp16 as qt_qmatrix_dequant rounds them).
 * x F16 (16-byte aligned). y F32 or F16 (rounded once); with accumulate != 0, y (F32 only) += the product (the
 * residual add fused). With a perm, x's columns are first gathered into processing order in `scratch`.
 */
QT_API int qt_qmatrix_gemv(void* y, int y_dtype, int accumulate, const void* x, const qt_qmatrix* w, int rows,
                           void* scratch, size_t scratch_bytes, void* stream);
/*
 * qt_qmatrix_gemv of one x by `count` (1..4) matrices w[0..count-1] in one launch (above 8 rows, one x gather and a
 * launch per matrix): y[i] = x . w[i]^T (q/k/v, gate/up;
 * three 4096-output products fill a GPU far better together than one after another). The matrices take the same
 * number of inputs and the same input order: all without a perm, or all with equal perms (w[0]'s is the one applied).
 * y_dtype and accumulate hold for every y[i]; scratch as qt_qmatrix_gemv_scratch_bytes says for w[0].
 */
QT_API int qt_qmatrix_gemv_many(int count, void* const* y, int y_dtype, int accumulate, const void* x,
                                const qt_qmatrix* w, int rows, void* scratch, size_t scratch_bytes, void* stream);
/* weight F16 [out, in] (16-byte aligned, inputs in their original order) = W, each value computed in F32 and rounded
 * once: what qt_linear then multiplies for more rows than qt_qmatrix_gemv takes (prefill, perplexity). */
QT_API int qt_qmatrix_dequant(void* weight, const qt_qmatrix* w, void* stream);

/* out [rows, cols] = x's columns in the order perm: out[r, k] = x[r, perm[k]], F16, perm I32 [cols] on the device. With
 * the perm-less copy of a qt_qmatrix (perm NULL: W's inputs in processing order), a product over many rows becomes
 * gather + qt_qmatrix_dequant (contiguous writes) + qt_linear, where dequantizing with the perm would scatter its writes. */
QT_API int qt_gather_columns(void* out, const void* x, const int32_t* perm, int rows, int cols, void* stream);

/* ---- Decoding with the position on the device (CUDA graphs replay the same calls at every step) ---- */

/*
 * One decoding step of causal GQA attention, RoPE included, for `batch` sequences of one new token each, all at the
 * position *pos (I32 on the device, read when the kernel runs, so a captured graph serves every step). q [batch,
 * heads * head_dim], k, v [batch, kv_heads * head_dim] (this token's projections, before RoPE), caches [batch, max_seq,
 * kv_heads * head_dim], out [batch, heads * head_dim]; all F16 (head_dim % 8 == 0, head_dim <= 256). RoPE as qt_rope
 * (rotate_half, angle = pos * inv_freq[j], inv_freq F32 [head_dim / 2]) is applied to q and k; k (rotated) and v are
 * stored at position *pos of each sequence's cache; then each query head attends over cache positions [0, *pos]
 * with scale 1/sqrt(head_dim). q and k are modified (rotated in place). *pos must be < max_seq (a larger value
 * writes nothing and leaves out as NaN). scratch: qt_decode_attention_scratch_bytes, enough for any *pos < max_seq.
 */
QT_API int qt_decode_attention_scratch_bytes(int batch, int max_seq, int heads, int kv_heads, int head_dim,
                                             size_t* bytes);
QT_API int qt_decode_attention(void* out, void* q, void* k, const void* v, void* k_cache, void* v_cache, int batch,
                               int max_seq, int heads, int kv_heads, int head_dim, const int32_t* pos,
                               const void* inv_freq, void* scratch, size_t scratch_bytes, void* stream);

/*
 * CUDA graphs: qt_graph_begin starts capturing `stream` (thread-local mode): qt_ calls queued on it until
 * qt_graph_end are recorded, not run (only calls that neither wait nor allocate may be captured: kernels, qt_linear,
 * async device copies). qt_graph_end stops the capture and instantiates it into *graph; qt_graph_launch replays it
 * on a stream (asynchronously); qt_graph_destroy frees it. A failed call inside a capture leaves the capture to be
 * ended by qt_graph_end, which then fails too.
 */
QT_API int qt_graph_begin(void* stream);
QT_API int qt_graph_end(void* stream, void** graph);
QT_API int qt_graph_launch(void* graph, void* stream);
QT_API int qt_graph_destroy(void* graph);

/* ---- Factorizations (cuSOLVER; need qt_init and cuSOLVER present) --------------------------------- */

/*
 * Cholesky factorization in place of a symmetric positive definite F32 matrix a [n, n] (row-major),
 * reading and writing only the given triangle: QT_LOWER gives L with a = L L^T, QT_UPPER gives U with
 * a = U^T U. The other triangle is left as it was. Waits for the result; *info is 0 on success, or
 * i > 0 when the leading minor of order i is not positive definite (then returns
 * QT_ERR_NOT_POSITIVE_DEFINITE).
 */
QT_API int qt_cholesky(void* a, int n, int triangle, int* info, void* stream);
/* Inverse of the matrix whose Cholesky factor qt_cholesky left in `triangle` of a; the inverse's same
 * triangle is written in place. Waits; *info as for qt_cholesky. */
QT_API int qt_cholesky_inverse(void* a, int n, int triangle, int* info, void* stream);
/* Copies one triangle of a row-major [n, n] F32 matrix onto the other, making it symmetric. */
QT_API int qt_symmetrize(void* a, int n, int from_triangle, void* stream);

/* ---- quantization: Gram matrices, GPTQ ---- */

/*
 * h += x^T x in FP32 (SSYRK, no TF32): h F32 [in, in], x F32 [rows, in]. The upper triangle is accumulated and then
 * copied onto the lower one (as CpuBackend.accumulateGram does), so h stays exactly symmetric. Needs qt_init.
 */
QT_API int qt_gram_accumulate(void* h, const void* x, int rows, int in, void* stream);

/*
 * GPTQ of one linear layer, in the steps of qtool.quantize.Gptq (the reference; CudaBackend.gptq drives them):
 *   1. qt_gptq_diagonal: diag(H) to the host, for the act-order permutation and the mean diagonal.
 *   2. qt_gptq_inverse_factor: U, the upper Cholesky factor of (H' + damp_abs I)^-1 in processing order, computed in
 *      F64 (cuSOLVER potrf of the order-reversed matrix, then a triangular inverse); returns
 *      QT_ERR_NOT_POSITIVE_DEFINITE (with *info > 0) when it does not factor: raise the damping and call again.
 *   3. qt_gptq_quantize: the column loop with lazy block updates (one kernel per block of block_size <= 128 columns,
 *      one SGEMM for the rest of the row), outputs in the ORIGINAL column order.
 * Shapes: w F32 [out, in] and h F32 [in, in] on the device, never modified; perm I32 [in] on the device: perm[k] is
 * the original column processed k-th. H' is H[perm][perm] with zero diagonals (dead inputs) set to 1; dead inputs'
 * weights count as 0. One workspace of qt_gptq_workspace_bytes serves steps 2 and 3 (not at the same time).
 */
QT_API int qt_gptq_workspace_bytes(int out, int in, int block_size, size_t* bytes);
/* diagonal: host F32 [n] <- h[i][i]. Waits. */
QT_API int qt_gptq_diagonal(float* diagonal, const void* h, int n, void* stream);
/* u: device F32 [n, n], upper triangle U (U^T U = (H' + damp_abs I)^-1), zeros below. Waits. */
QT_API int qt_gptq_inverse_factor(void* u, const void* h, const int32_t* perm, int n, double damp_abs, void* workspace,
                                  size_t workspace_bytes, int* info, void* stream);
/*
 * bits 1..8 (codes are bytes); group_size -1 (one grid per row, from the row before dead columns are zeroed) or > 0;
 * sym: 1 symmetric, 0 asymmetric, 2 asymmetric with zero points of at least 1 (GptqParams.v1Zeros); mse,
 * static_groups as GptqParams (static groups need group_size > 0); block_size 1..128 (QT_ERR_UNSUPPORTED
 * above). Outputs on the device: codes U8 [out, in], scales F32 [groups, out], zeros I32 [groups, out], dequantized
 * F32 [out, in] = scales * (codes - zeros) of each column's group; *loss (host) = sum (w - q)^2 / U_ii^2 / 2. Waits.
 */
QT_API int qt_gptq_quantize(const void* w, const void* h, const void* u, const int32_t* perm, int out, int in, int bits,
                            int group_size, int sym, int mse, int static_groups, int block_size, void* codes,
                            void* scales, void* zeros, void* dequantized, double* loss, void* workspace,
                            size_t workspace_bytes, void* stream);

/*
 * EXL2 quantization of one linear (qtool.quantize.Exl2Gptq is the reference; CudaBackend drives these). Prepare
 * once per linear input with qt_gptq_diagonal and qt_gptq_inverse_factor (perm = inputs by decreasing diag(H), damping
 * as Exl2Gptq.prepare; the zero diagonals that call sets to 1 change nothing here: such an input is uncoupled), then
 * quantize each option of each linear reading that input with qt_exl2_quantize:
 * w F32 [out, in], u F32 [in, in] and perm I32 [in] on the device (not modified); group_bits / group_rows: host
 * arrays [groups], the groups in storage order (decreasing bits) covering the processing-order rows consecutively.
 * Outputs on the device: codes U8 [in, out] (row k = input perm[k]), qscale U8 [groups, out] (sub-scales 1..16),
 * qscale_max F32 [groups] (fp16 values). A group of more than 1024 rows gives QT_ERR_UNSUPPORTED. Waits.
 */
QT_API int qt_exl2_workspace_bytes(int out, int in, int max_group_rows, size_t* bytes);
QT_API int qt_exl2_quantize(const void* w, const void* u, const int32_t* perm, int out, int in, int groups,
                            const int* group_bits, const int* group_rows, void* codes, void* qscale, void* qscale_max,
                            void* workspace, size_t workspace_bytes, void* stream);

/* ---- quantization: AWQ ---- */

/*
 * AWQ's clipping search, as qtool.quantize.Awq.searchClip (the reference): for each row of w F32 [out, in] and each
 * group of group_size input columns (-1: the whole row; a shorter last group when group_size does not divide in),
 * the clamp range {lo, hi} among Awq.clipCandidates (10 symmetric ranges; with two_sided 100 two-sided ones after
 * them) minimising d^T H_g d, d = Q(clamp(w_g)) - w_g, Q the grid of Awq.quantizeGroup (bits 2..8, zero_point or
 * symmetric), H_g the group's diagonal block of gram F32 [in, in] (the sampled inputs' X^T X, as
 * qt_gram_accumulate makes it); the first minimum wins. range_out: device F32 [out, groups, 2]. Groups wider than
 * 128 columns give QT_ERR_UNSUPPORTED (search those on the host). Queued on stream; does not wait.
 */
QT_API int qt_awq_clip_search(float* range_out, const void* w, const void* gram, int out, int in, int group_size, int bits,
                              int zero_point, int two_sided, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* QTOOL_H */
