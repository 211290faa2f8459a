// Standalone kernel test for libqtool (no Java): every kernel against a double-precision CPU reference on
// fresh random inputs, through the public C ABI of qtool.h. Outputs are poisoned (NaN bytes) before each
// call so an unwritten element fails; every status is checked. Prints a PASS/FAIL table, then timings
// (copy bandwidth, attention prefill TFLOP/s); exits 1 if any check fails, 2 if the GPU or cuBLAS is missing.
//
// Usage: test_kernels [--seed N] [--cuda-lib-dir DIR[:DIR...]] [--no-bench] [--filter NAME] [--bench NAME] [--bench-only]
//   --bench NAME runs only the timing sections (copy, attention, linear, layer, decode, qmatrix) whose name contains NAME;
//   --bench awqclip times qt_awq_clip_search on Llama-2-7B shapes (only when named).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtool.h"

namespace {

// ---- plumbing ---------------------------------------------------------------------------------------

struct StatusError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

void check(int status, const char* call) {
    if (status != QT_OK)
        throw StatusError(std::string(call) + " -> " + qt_status_string(status) + ": " + qt_last_error());
}
#define CHECK(call) check((call), #call)

std::mt19937_64 rng;

std::vector<float> randn(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
}

std::vector<float> uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
}

// A device buffer, freed on scope exit.
struct Device {
    void* ptr = nullptr;
    size_t bytes = 0;
    explicit Device(size_t n) : bytes(n) { CHECK(qt_malloc(&ptr, n)); }
    Device(Device&& other) noexcept : ptr(other.ptr), bytes(other.bytes) { other.ptr = nullptr; }
    Device(const Device&) = delete;
    Device& operator=(const Device&) = delete;
    ~Device() { qt_free(ptr); }
    template <typename T> static Device from(const std::vector<T>& host) {
        Device d(host.size() * sizeof(T));
        CHECK(qt_memcpy_htod(d.ptr, host.data(), d.bytes, nullptr));
        return d;
    }
    template <typename T> std::vector<T> to_host(size_t n) const {
        std::vector<T> host(n);
        CHECK(qt_memcpy_dtoh(host.data(), ptr, n * sizeof(T), nullptr));
        return host;
    }
    void poison() { CHECK(qt_memset_async(ptr, 0xff, bytes, nullptr)); }  // all-ones bytes: NaN in F32/F16/BF16
};

std::vector<uint16_t> to_f16(const std::vector<float>& v) {
    std::vector<uint16_t> out(v.size());
    for (size_t i = 0; i < v.size(); i++) {
        __half h = __float2half_rn(v[i]);
        memcpy(&out[i], &h, 2);
    }
    return out;
}
std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> out(v.size());
    for (size_t i = 0; i < v.size(); i++) {
        __nv_bfloat16 h = __float2bfloat16_rn(v[i]);
        memcpy(&out[i], &h, 2);
    }
    return out;
}
float f16_value(uint16_t bits) {
    __half h;
    memcpy(&h, &bits, 2);
    return __half2float(h);
}
float bf16_value(uint16_t bits) {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

const char* dtype_str(int dtype) { return dtype == QT_F32 ? "F32" : dtype == QT_F16 ? "F16" : "BF16"; }
size_t dtype_size(int dtype) { return dtype == QT_F32 ? 4 : 2; }

// The values a tensor of `dtype` holds for v (16-bit: rounded to nearest even).
std::vector<float> rounded(const std::vector<float>& v, int dtype) {
    if (dtype == QT_F32) return v;
    std::vector<uint16_t> bits = dtype == QT_F16 ? to_f16(v) : to_bf16(v);
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); i++) out[i] = dtype == QT_F16 ? f16_value(bits[i]) : bf16_value(bits[i]);
    return out;
}

// ||out - ref|| / ||ref||; any non-finite output is an infinite error.
template <typename T>
double rel_l2(const std::vector<T>& out, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        double o = static_cast<double>(out[i]);
        if (!std::isfinite(o)) return INFINITY;
        num += (o - ref[i]) * (o - ref[i]);
        den += ref[i] * ref[i];
    }
    return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// v on the device as `dtype` (16-bit: rounded), and a device tensor of `dtype` read back as floats.
Device upload_as(const std::vector<float>& v, int dtype) {
    if (dtype == QT_F32) return Device::from(v);
    return Device::from(dtype == QT_F16 ? to_f16(v) : to_bf16(v));
}
std::vector<float> download_as(const Device& d, size_t n, int dtype) {
    if (dtype == QT_F32) return d.to_host<float>(n);
    std::vector<uint16_t> bits = d.to_host<uint16_t>(n);
    std::vector<float> out(n);
    for (size_t i = 0; i < n; i++) out[i] = dtype == QT_F16 ? f16_value(bits[i]) : bf16_value(bits[i]);
    return out;
}

struct Row {
    std::string name;
    double error;
    double limit;
    std::string note;
    bool pass() const { return error <= limit; }
};
std::vector<Row> rows;
int failures = 0;

void record(const std::string& name, double error, double limit, const std::string& note = "") {
    Row row{name, error, limit, note};
    if (!row.pass()) failures++;
    rows.push_back(row);
}

std::string only;  // --filter: run only the tests whose name contains this

// Runs one test; a bad status becomes a FAIL row carrying the message.
void run(const std::string& name, const std::function<void()>& test) {
    if (!only.empty() && name.find(only) == std::string::npos) return;
    try {
        test();
    } catch (const std::exception& e) {
        record(name, INFINITY, 0, e.what());
    }
}

// ---- references ------------------------------------------------------------------------------------

std::vector<double> ref_rmsnorm(const std::vector<float>& x, const std::vector<float>& w, int rows, int cols, float eps) {
    std::vector<double> out(x.size());
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int j = 0; j < cols; j++) ss += double(x[r * cols + j]) * x[r * cols + j];
        double inv = 1.0 / std::sqrt(ss / cols + eps);
        for (int j = 0; j < cols; j++) out[r * cols + j] = x[r * cols + j] * inv * w[j];
    }
    return out;
}

// Attention reference with its own double-precision caches, updated like the kernel's.
struct AttentionReference {
    int batch, max_seq, heads, kv_heads, head_dim;
    std::vector<double> k_cache, v_cache;
    AttentionReference(int b, int m, int h, int kvh, int d)
        : batch(b), max_seq(m), heads(h), kv_heads(kvh), head_dim(d),
          k_cache(size_t(b) * m * kvh * d), v_cache(size_t(b) * m * kvh * d) {}

    std::vector<double> step(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                             int seq_len, int start_pos) {
        const int kv_width = kv_heads * head_dim, q_width = heads * head_dim, group = heads / kv_heads;
        for (int b = 0; b < batch; b++)
            for (int s = 0; s < seq_len; s++)
                for (int c = 0; c < kv_width; c++) {
                    size_t dst = (size_t(b) * max_seq + start_pos + s) * kv_width + c;
                    k_cache[dst] = k[(size_t(b) * seq_len + s) * kv_width + c];
                    v_cache[dst] = v[(size_t(b) * seq_len + s) * kv_width + c];
                }
        std::vector<double> out(size_t(batch) * seq_len * q_width);
        std::vector<double> scores(start_pos + seq_len);
        const double scale = 1.0 / std::sqrt(double(head_dim));
        for (int b = 0; b < batch; b++)
            for (int s = 0; s < seq_len; s++)
                for (int h = 0; h < heads; h++) {
                    const int p = start_pos + s, kvh = h / group;
                    const float* qrow = &q[(size_t(b) * seq_len + s) * q_width + size_t(h) * head_dim];
                    double mx = -INFINITY;
                    for (int t = 0; t <= p; t++) {
                        const double* krow = &k_cache[(size_t(b) * max_seq + t) * kv_width + size_t(kvh) * head_dim];
                        double dot = 0;
                        for (int d = 0; d < head_dim; d++) dot += qrow[d] * krow[d];
                        scores[t] = dot * scale;
                        mx = std::max(mx, scores[t]);
                    }
                    double sum = 0;
                    for (int t = 0; t <= p; t++) sum += (scores[t] = std::exp(scores[t] - mx));
                    double* orow = &out[(size_t(b) * seq_len + s) * q_width + size_t(h) * head_dim];
                    for (int t = 0; t <= p; t++) {
                        const double* vrow = &v_cache[(size_t(b) * max_seq + t) * kv_width + size_t(kvh) * head_dim];
                        for (int d = 0; d < head_dim; d++) orow[d] += scores[t] / sum * vrow[d];
                    }
                }
        return out;
    }
};

// ---- tests ------------------------------------------------------------------------------------------

void test_cast() {
    const size_t n = 100003;
    std::vector<float> x = randn(n, 3.0f);
    x[0] = 65504.0f * 2;  // overflows F16 to inf
    x[1] = 1e-8f;         // F16 subnormal range
    Device dx = Device::from(x);
    struct Case { int dtype; const char* name; std::vector<uint16_t> (*convert)(const std::vector<float>&); float (*value)(uint16_t); };
    for (Case c : {Case{QT_F16, "F16", to_f16, f16_value}, Case{QT_BF16, "BF16", to_bf16, bf16_value}}) {
        run(std::string("cast F32->") + c.name + " (bits)", [&] {
            Device out(n * 2);
            out.poison();
            CHECK(qt_cast(out.ptr, c.dtype, dx.ptr, QT_F32, n, nullptr));
            std::vector<uint16_t> got = out.to_host<uint16_t>(n), want = c.convert(x);
            size_t mismatches = 0;
            for (size_t i = 0; i < n; i++) mismatches += got[i] != want[i];
            record(std::string("cast F32->") + c.name + " (bits)", double(mismatches), 0, "mismatching elements");
        });
        run(std::string("cast ") + c.name + "->F32", [&] {
            std::vector<uint16_t> half = c.convert(x);
            Device src = Device::from(half), out(n * 4);
            out.poison();
            CHECK(qt_cast(out.ptr, QT_F32, src.ptr, c.dtype, n, nullptr));
            std::vector<float> got = out.to_host<float>(n);
            size_t mismatches = 0;
            for (size_t i = 0; i < n; i++) {
                float w = c.value(half[i]);
                mismatches += !(got[i] == w || (std::isnan(got[i]) && std::isnan(w)));
            }
            record(std::string("cast ") + c.name + "->F32 (exact)", double(mismatches), 0, "mismatching elements");
        });
    }
    run("cast F64->F32", [&] {
        std::vector<double> d(n);
        for (size_t i = 0; i < n; i++) d[i] = double(x[i]) * 1.000000123;
        Device src = Device::from(d), out(n * 4);
        out.poison();
        CHECK(qt_cast(out.ptr, QT_F32, src.ptr, QT_F64, n, nullptr));
        std::vector<float> got = out.to_host<float>(n);
        size_t mismatches = 0;
        for (size_t i = 0; i < n; i++) mismatches += got[i] != static_cast<float>(d[i]);
        record("cast F64->F32 (exact)", double(mismatches), 0, "mismatching elements");
    });
}

void test_embedding() {
    const int vocab = 1000, dim = 576, rows = 77;
    std::vector<float> table = randn(size_t(vocab) * dim);
    std::vector<int> ids(rows);
    std::uniform_int_distribution<int> pick(0, vocab - 1);
    for (auto& id : ids) id = pick(rng);
    Device dids = Device::from(ids);
    for (int dtype : {QT_F32, QT_F16, QT_BF16}) {
        std::string name = std::string("embedding ") + (dtype == QT_F32 ? "F32" : dtype == QT_F16 ? "F16" : "BF16");
        run(name, [&] {
            std::vector<uint16_t> half = dtype == QT_F16 ? to_f16(table) : to_bf16(table);
            Device dtable = dtype == QT_F32 ? Device::from(table) : Device::from(half);
            Device out(size_t(rows) * dim * 4);
            out.poison();
            CHECK(qt_embedding(out.ptr, dtable.ptr, dtype, dids.ptr, rows, dim, vocab, nullptr));
            std::vector<float> got = out.to_host<float>(size_t(rows) * dim);
            std::vector<double> ref(got.size());
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < dim; j++) {
                    size_t t = size_t(ids[r]) * dim + j;
                    ref[size_t(r) * dim + j] = dtype == QT_F32 ? table[t] : dtype == QT_F16 ? f16_value(half[t]) : bf16_value(half[t]);
                }
            record(name, rel_l2(got, ref), 0);
        });
    }
}

void test_rmsnorm() {
    const int rows = 13, cols = 4096;
    const float eps = 1e-5f;
    std::vector<float> x = randn(size_t(rows) * cols, 2.0f), w = uniform(cols, 0.5f, 1.5f);
    run("rmsnorm F32 weight", [&] {
        Device dx = Device::from(x), dw = Device::from(w), out(x.size() * 4);
        out.poison();
        CHECK(qt_rmsnorm(out.ptr, QT_F32, dx.ptr, dw.ptr, QT_F32, rows, cols, eps, nullptr));
        record("rmsnorm F32 weight", rel_l2(out.to_host<float>(x.size()), ref_rmsnorm(x, w, rows, cols, eps)), 1e-6);
    });
    run("rmsnorm BF16 weight, in place", [&] {
        std::vector<uint16_t> wb = to_bf16(w);
        std::vector<float> wr(cols);
        for (int j = 0; j < cols; j++) wr[j] = bf16_value(wb[j]);
        Device dx = Device::from(x), dw = Device::from(wb);
        CHECK(qt_rmsnorm(dx.ptr, QT_F32, dx.ptr, dw.ptr, QT_BF16, rows, cols, eps, nullptr));
        record("rmsnorm BF16 weight, in place", rel_l2(dx.to_host<float>(x.size()), ref_rmsnorm(x, wr, rows, cols, eps)), 1e-6);
    });
    run("rmsnorm cols 64", [&] {
        std::vector<float> xs = randn(5 * 64), ws = uniform(64, 0.5f, 1.5f);
        Device dx = Device::from(xs), dw = Device::from(ws), out(xs.size() * 4);
        out.poison();
        CHECK(qt_rmsnorm(out.ptr, QT_F32, dx.ptr, dw.ptr, QT_F32, 5, 64, eps, nullptr));
        record("rmsnorm cols 64", rel_l2(out.to_host<float>(xs.size()), ref_rmsnorm(xs, ws, 5, 64, eps)), 1e-6);
    });
    // 16-bit outputs (the input of a 16-bit linear): one rounding of the F32 result; also an odd width (scalar path).
    for (int dtype : {QT_F16, QT_BF16}) {
        for (int c : {cols, 577}) {
            std::string name = std::string("rmsnorm ") + dtype_str(dtype) + " out, cols " + std::to_string(c);
            run(name, [&] {
                std::vector<float> xs = randn(size_t(rows) * c, 2.0f), ws = uniform(c, 0.5f, 1.5f);
                Device dx = Device::from(xs), dw = Device::from(ws), out(xs.size() * 2);
                out.poison();
                CHECK(qt_rmsnorm(out.ptr, dtype, dx.ptr, dw.ptr, QT_F32, rows, c, eps, nullptr));
                record(name, rel_l2(download_as(out, xs.size(), dtype), ref_rmsnorm(xs, ws, rows, c, eps)),
                       dtype == QT_F16 ? 6e-4 : 5e-3);
            });
        }
    }
}

void test_rope() {
    const int batch = 2, seq = 37, heads = 8, start = 1500;
    const int rows = batch * seq;
    // head_dim 64: the paired 16-bit kernel; 6: the scalar one.
    for (int head_dim : {64, 6})
    for (int dtype : {QT_F32, QT_F16, QT_BF16}) {
        const int width = heads * head_dim;
        std::string name = std::string("rope ") + dtype_str(dtype) + " d" + std::to_string(head_dim) + " (startPos 1500)";
        run(name, [&] {
            std::vector<float> x = rounded(randn(size_t(rows) * width), dtype), inv(head_dim / 2);
            for (int j = 0; j < head_dim / 2; j++) inv[j] = static_cast<float>(1.0 / std::pow(500000.0, 2.0 * j / head_dim));
            Device dx = upload_as(x, dtype), dinv = Device::from(inv);
            CHECK(qt_rope(dx.ptr, dtype, rows, heads, head_dim, seq, start, dinv.ptr, nullptr));
            std::vector<double> ref(x.size());
            const int half = head_dim / 2;
            for (int r = 0; r < rows; r++)
                for (int h = 0; h < heads; h++)
                    for (int j = 0; j < half; j++) {
                        // The documented angle: an F32 product, then exact trigonometry.
                        double angle = static_cast<float>(start + r % seq) * inv[j];
                        size_t base = size_t(r) * width + size_t(h) * head_dim;
                        double a = x[base + j], b = x[base + j + half];
                        ref[base + j] = a * std::cos(angle) - b * std::sin(angle);
                        ref[base + j + half] = b * std::cos(angle) + a * std::sin(angle);
                    }
            record(name, rel_l2(download_as(dx, x.size(), dtype), ref),
                   dtype == QT_F32 ? 1e-6 : dtype == QT_F16 ? 6e-4 : 5e-3);
        });
    }
}

// Prefill of seq_len positions, then a decode step at start_pos seq_len; caches start as NaN bytes, so a
// read of a position that was never written shows.
// dtype F16/BF16: inputs rounded to 16 bits (the reference sees the rounded values), 16-bit caches and output.
void test_attention(int batch, int heads, int kv_heads, int head_dim, int seq_len, bool decode_scratch = true,
                    int dtype = QT_F32) {
    char name[128];
    snprintf(name, sizeof name, "attention %s b%d h%d kv%d d%d s%d", dtype_str(dtype), batch, heads, kv_heads, head_dim,
             seq_len);
    const int max_seq = seq_len + 9;
    const int q_width = heads * head_dim, kv_width = kv_heads * head_dim;
    // F16: P and the output are rounded to 11 significant bits; BF16: 8.
    const double limit = dtype == QT_F32 ? 1e-5 : dtype == QT_F16 ? 2e-3 : 1.5e-2;
    run(name, [&] {
        Device k_cache(size_t(batch) * max_seq * kv_width * dtype_size(dtype)), v_cache(k_cache.bytes);
        k_cache.poison();
        v_cache.poison();
        AttentionReference ref(batch, max_seq, heads, kv_heads, head_dim);
        struct Step { int seq, start; bool scratch; };
        for (Step step : {Step{seq_len, 0, true}, Step{1, seq_len, decode_scratch}, Step{3, seq_len + 1, true}}) {
            const int rows = batch * step.seq;
            std::vector<float> q = randn(size_t(rows) * q_width), k = randn(size_t(rows) * kv_width),
                               v = randn(size_t(rows) * kv_width);
            // Larger keys sharpen the softmax, so a wrong scale or mask shows in the error.
            for (auto& x : k) x *= 2.0f;
            q = rounded(q, dtype);
            k = rounded(k, dtype);
            v = rounded(v, dtype);
            Device dq = upload_as(q, dtype), dk = upload_as(k, dtype), dv = upload_as(v, dtype),
                   out(size_t(rows) * q_width * dtype_size(dtype));
            out.poison();
            size_t scratch_bytes = 0;
            CHECK(qt_attention_scratch_bytes(dtype, batch, step.seq, step.start, heads, kv_heads, head_dim, &scratch_bytes));
            if (!step.scratch) scratch_bytes = 0;
            Device scratch(scratch_bytes);
            CHECK(qt_attention(out.ptr, dq.ptr, dk.ptr, dv.ptr, k_cache.ptr, v_cache.ptr, dtype, batch, step.seq,
                               step.start, max_seq, heads, kv_heads, head_dim, scratch.ptr, scratch_bytes, nullptr));
            std::vector<double> want = ref.step(q, k, v, step.seq, step.start);
            char label[192];
            snprintf(label, sizeof label, "%s %s s%d@%d", name, step.start == 0 ? "prefill" : "step", step.seq, step.start);
            char note[64];
            snprintf(note, sizeof note, "%s", scratch_bytes ? "keys split" : "");
            record(label, rel_l2(download_as(out, want.size(), dtype), want), limit, note);
        }
    });
}

void test_silu_add() {
    const size_t n = 3 * 8192 + 3;  // a tail that misses the vector path
    std::vector<float> g = randn(n, 3.0f), u = randn(n);
    for (int dtype : {QT_F32, QT_F16, QT_BF16}) {
        const double limit = dtype == QT_F32 ? 1e-6 : dtype == QT_F16 ? 6e-4 : 5e-3;
        std::string name = std::string("silu_mul ") + dtype_str(dtype);
        run(name, [&] {
            std::vector<float> gr = rounded(g, dtype), ur = rounded(u, dtype);
            Device dg = upload_as(gr, dtype), du = upload_as(ur, dtype), out(n * dtype_size(dtype));
            out.poison();
            CHECK(qt_silu_mul(out.ptr, dg.ptr, du.ptr, dtype, n, nullptr));
            std::vector<double> ref(n);
            for (size_t i = 0; i < n; i++) ref[i] = gr[i] / (1.0 + std::exp(-double(gr[i]))) * ur[i];
            record(name, rel_l2(download_as(out, n, dtype), ref), limit);
        });
        run(name + " in place (vector)", [&] {
            const size_t m = 8192;
            std::vector<float> gm = rounded(std::vector<float>(g.begin(), g.begin() + m), dtype),
                               um = rounded(std::vector<float>(u.begin(), u.begin() + m), dtype);
            Device dg = upload_as(gm, dtype), du = upload_as(um, dtype);
            CHECK(qt_silu_mul(dg.ptr, dg.ptr, du.ptr, dtype, m, nullptr));
            std::vector<double> ref(m);
            for (size_t i = 0; i < m; i++) ref[i] = gm[i] / (1.0 + std::exp(-double(gm[i]))) * um[i];
            record(name + " in place (vector)", rel_l2(download_as(dg, m, dtype), ref), limit);
        });
    }
    run("add", [&] {
        Device dx = Device::from(g), dy = Device::from(u);
        CHECK(qt_add(dx.ptr, dy.ptr, n, nullptr));
        std::vector<double> ref(n);
        for (size_t i = 0; i < n; i++) ref[i] = double(g[i]) + u[i];
        record("add", rel_l2(dx.to_host<float>(n), ref), 1e-7);
    });
}

// x_dtype: F32 (rounded to the weight's type inside qt_linear) or the weight's type; out_dtype F32 or the weight's
// type; accumulate: out starts as random values that the product adds to.
void test_linear(int weight_dtype, int rows, int in, int out_f, bool bias, double limit, int x_dtype = QT_F32,
                 int out_dtype = QT_F32, bool accumulate = false) {
    char name[160];
    snprintf(name, sizeof name, "linear %s %dx%d->%d%s x %s out %s%s", dtype_str(weight_dtype), rows, in, out_f,
             bias ? " +bias" : "", dtype_str(x_dtype), dtype_str(out_dtype), accumulate ? " accumulate" : "");
    run(name, [&] {
        std::vector<float> x = rounded(randn(size_t(rows) * in), x_dtype), w = randn(size_t(out_f) * in, 0.05f),
                           b = randn(out_f);
        std::vector<float> wv = rounded(w, weight_dtype), bv = rounded(b, weight_dtype);  // the values the GPU holds
        std::vector<float> start = rounded(randn(size_t(rows) * out_f), out_dtype);
        Device dx = upload_as(x, x_dtype), dw = upload_as(w, weight_dtype), db = upload_as(b, weight_dtype);
        Device dout = accumulate ? upload_as(start, out_dtype) : Device(size_t(rows) * out_f * dtype_size(out_dtype));
        if (!accumulate) dout.poison();
        size_t scratch_bytes = 0;
        CHECK(qt_linear_scratch_bytes(rows, in, x_dtype, weight_dtype, &scratch_bytes));
        Device scratch(scratch_bytes);
        CHECK(qt_linear(dout.ptr, out_dtype, dx.ptr, x_dtype, dw.ptr, weight_dtype, bias ? db.ptr : nullptr,
                        weight_dtype, rows, in, out_f, accumulate ? 1 : 0, scratch.ptr, scratch_bytes, nullptr));
        // Reference: the unrounded activations times the weight values held on the GPU.
        std::vector<double> ref(size_t(rows) * out_f);
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < out_f; o++) {
                double acc = (bias ? bv[o] : 0.0) + (accumulate ? start[size_t(r) * out_f + o] : 0.0);
                const float* xr = &x[size_t(r) * in];
                const float* wr = &wv[size_t(o) * in];
                for (int i = 0; i < in; i++) acc += double(xr[i]) * wr[i];
                ref[size_t(r) * out_f + o] = acc;
            }
        record(name, rel_l2(download_as(dout, ref.size(), out_dtype), ref), limit);
    });
}

void test_cross_entropy() {
    const int rows = 6, vocab = 32000;
    run("cross_entropy", [&] {
        std::vector<float> logits = randn(size_t(rows) * vocab, 4.0f);
        logits[size_t(2) * vocab + 7] = 60.0f;  // a peaked row: loss near 0 for its target
        for (int j = 0; j < vocab; j += 3) logits[size_t(3) * vocab + j] = -INFINITY;  // masked logits
        std::vector<int> targets = {5, 31999, 7, 1, 12345, 0};
        Device dl = Device::from(logits), dt = Device::from(targets), out(rows * 4);
        out.poison();
        CHECK(qt_cross_entropy(out.ptr, dl.ptr, dt.ptr, rows, vocab, nullptr));
        std::vector<double> ref(rows);
        for (int r = 0; r < rows; r++) {
            const float* l = &logits[size_t(r) * vocab];
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < vocab; j++) mx = std::max(mx, double(l[j]));
            for (int j = 0; j < vocab; j++) sum += std::exp(double(l[j]) - mx);
            ref[r] = mx + std::log(sum) - l[targets[r]];
        }
        record("cross_entropy", rel_l2(out.to_host<float>(rows), ref), 1e-6);
    });
}

void test_cholesky(int n) {
    // a = M M^T / n + I: symmetric positive definite and well conditioned.
    std::vector<float> m = randn(size_t(n) * n);
    std::vector<double> a(size_t(n) * n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double acc = i == j ? 1.0 : 0.0;
            for (int k = 0; k < n; k++) acc += double(m[size_t(i) * n + k]) * m[size_t(j) * n + k] / n;
            a[size_t(i) * n + j] = acc;
        }
    std::vector<float> af(a.begin(), a.end());
    for (int triangle : {QT_LOWER, QT_UPPER}) {
        std::string name = std::string("cholesky n") + std::to_string(n) + (triangle == QT_LOWER ? " lower" : " upper");
        run(name, [&] {
            Device da = Device::from(af);
            int info = -1;
            CHECK(qt_cholesky(da.ptr, n, triangle, &info, nullptr));
            std::vector<float> f = da.to_host<float>(af.size());
            // Rebuild a from the factor's triangle: L L^T (lower) or U^T U (upper).
            std::vector<double> rebuilt(a.size());
            auto factor = [&](int i, int j) -> double {  // L[i][j] (zero above the diagonal)
                if (j > i) return 0.0;
                return triangle == QT_LOWER ? f[size_t(i) * n + j] : f[size_t(j) * n + i];
            };
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) {
                    double acc = 0;
                    for (int k = 0; k <= std::min(i, j); k++) acc += factor(i, k) * factor(j, k);
                    rebuilt[size_t(i) * n + j] = acc;
                }
            std::vector<double> orig(a);
            record(name + " (L L^T = A)", rel_l2(rebuilt, orig), 1e-5, "info " + std::to_string(info));

            CHECK(qt_cholesky_inverse(da.ptr, n, triangle, &info, nullptr));
            CHECK(qt_symmetrize(da.ptr, n, triangle, nullptr));
            std::vector<float> inv = da.to_host<float>(af.size());
            std::vector<double> product(a.size()), identity(a.size());
            for (int i = 0; i < n; i++) {
                identity[size_t(i) * n + i] = 1.0;
                for (int j = 0; j < n; j++) {
                    double acc = 0;
                    for (int k = 0; k < n; k++) acc += a[size_t(i) * n + k] * inv[size_t(k) * n + j];
                    product[size_t(i) * n + j] = acc;
                }
            }
            record(name + " inverse (A X = I)", rel_l2(product, identity), 1e-4);
        });
    }
    run("cholesky of a non-SPD matrix", [&] {
        std::vector<float> bad(af);
        bad[size_t(5) * n + 5] = -1.0f;  // minor of order 6 turns indefinite
        Device db = Device::from(bad);
        int info = 0;
        int status = qt_cholesky(db.ptr, n, QT_LOWER, &info, nullptr);
        record("cholesky of a non-SPD matrix", status == QT_ERR_NOT_POSITIVE_DEFINITE && info > 0 ? 0 : 1, 0,
               std::string(qt_status_string(status)) + ", info " + std::to_string(info));
    });
}

void test_errors() {
    run("errors are reported", [&] {
        int wrong = 0;
        std::string notes;
        Device buffer(1024);
        // head_dim not a multiple of 4; head_dim above 256; heads not a multiple of kv_heads; unaligned.
        void* b = buffer.ptr;
        int s1 = qt_attention(b, b, b, b, b, b, QT_F32, 1, 1, 0, 4, 2, 1, 6, nullptr, 0, nullptr);
        wrong += s1 != QT_ERR_INVALID_ARGUMENT || strstr(qt_last_error(), "head_dim") == nullptr;
        int s2 = qt_attention(b, b, b, b, b, b, QT_F32, 1, 1, 0, 4, 2, 1, 512, nullptr, 0, nullptr);
        wrong += s2 != QT_ERR_UNSUPPORTED;
        int s3 = qt_attention(b, b, b, b, b, b, QT_F32, 1, 1, 0, 4, 3, 2, 8, nullptr, 0, nullptr);
        wrong += s3 != QT_ERR_INVALID_ARGUMENT;
        int s4 = qt_linear(b, QT_F32, b, QT_F32, b, QT_F16, nullptr, 0, 4, 8, 8, 0, nullptr, 0, nullptr);
        wrong += s4 != QT_ERR_INVALID_ARGUMENT || strstr(qt_last_error(), "scratch") == nullptr;
        // 16-bit attention: head_dim 12 (not a multiple of 8), 256 (above 128); BF16 x with F16 weights.
        int s6 = qt_attention(b, b, b, b, b, b, QT_F16, 1, 1, 0, 4, 2, 1, 12, nullptr, 0, nullptr);
        wrong += s6 != QT_ERR_INVALID_ARGUMENT;
        int s7 = qt_attention(b, b, b, b, b, b, QT_BF16, 1, 1, 0, 4, 2, 1, 256, nullptr, 0, nullptr);
        wrong += s7 != QT_ERR_UNSUPPORTED;
        int s8 = qt_linear(b, QT_F32, b, QT_BF16, b, QT_F16, nullptr, 0, 4, 8, 8, 0, nullptr, 0, nullptr);
        wrong += s8 != QT_ERR_INVALID_ARGUMENT;
        void* huge = nullptr;
        int s5 = qt_malloc(&huge, size_t(1) << 50);
        wrong += s5 != QT_ERR_OUT_OF_MEMORY;
        notes = std::string("e.g. \"") + qt_last_error() + "\"";
        // The failed allocation must not poison later calls.
        CHECK(qt_memset_async(buffer.ptr, 0, 1024, nullptr));
        CHECK(qt_device_synchronize());
        record("errors are reported", wrong, 0, notes.substr(0, 110));
    });
}

// ---- quantized matrices (qt_qmatrix) ------------------------------------------------------------------

// A random qt_qmatrix on the host, packed as qtool.h lays it out, with the codes, scales and zeros it stands for.
// Widths come in decreasing segments over the units (EXL2's order); each group (32, 64 or 128 rows, drawn per group)
// has one width.
struct HostQMatrix {
    int in = 0, out = 0, groups = 0, qrows = 0;
    std::vector<int> unit_bits, unit_group;  // per unit of 32 processing rows
    std::vector<uint8_t> codes;              // [in, out], processing order
    std::vector<uint32_t> qweight;           // [qrows, out]
    std::vector<int32_t> units;              // [in / 32, 2]: first qweight row, group << 8 | bits
    std::vector<uint16_t> scales, zeros;     // F16 [groups, out]; zeros empty = NULL (z = 2^(bits - 1))
    std::vector<int32_t> perm;               // [in] or empty

    double scale(int g, int o) const { return f16_value(scales[size_t(g) * out + o]); }
    double zero(int g, int o, int bits) const { return zeros.empty() ? double(1 << (bits - 1)) : f16_value(zeros[size_t(g) * out + o]); }
    // W at processing row k, output o.
    double weight(int k, int o) const {
        const int u = k / 32, bits = unit_bits[u], g = unit_group[u];
        return scale(g, o) * (codes[size_t(k) * out + o] - zero(g, o, bits));
    }
};

HostQMatrix make_qmatrix(int in, int out, const std::vector<int>& widths, const std::vector<int>& group_rows,
                         bool with_zeros, bool with_perm) {
    HostQMatrix h;
    h.in = in;
    h.out = out;
    const int n = in / 32;
    h.unit_bits.resize(n);
    h.unit_group.resize(n);
    std::vector<int> group_bits;
    for (int u = 0; u < n; h.groups++) {
        const int group_units = group_rows[rng() % group_rows.size()] / 32, bits = widths[size_t(u) * widths.size() / n];
        group_bits.push_back(bits);
        for (int k = 0; k < group_units && u < n; k++, u++) {
            h.unit_bits[u] = bits;
            h.unit_group[u] = h.groups;
        }
    }
    for (int u = 0; u < n; u++) {
        h.units.push_back(h.qrows);
        h.units.push_back(h.unit_group[u] << 8 | h.unit_bits[u]);
        h.qrows += h.unit_bits[u];
    }
    h.codes.resize(size_t(in) * out);
    h.qweight.assign(size_t(h.qrows) * out, 0);
    for (int u = 0; u < n; u++) {
        const int bits = h.unit_bits[u], row0 = h.units[2 * u];
        for (int j = 0; j < 32; j++) {
            const int bit = j * bits, word = bit >> 5, shift = bit & 31;
            for (int o = 0; o < out; o++) {
                const uint32_t q = static_cast<uint32_t>(rng() & ((1u << bits) - 1));
                h.codes[size_t(u * 32 + j) * out + o] = static_cast<uint8_t>(q);
                h.qweight[size_t(row0 + word) * out + o] |= q << shift;
                if (shift + bits > 32) h.qweight[size_t(row0 + word + 1) * out + o] |= q >> (32 - shift);
            }
        }
    }
    h.scales = to_f16(uniform(size_t(h.groups) * out, 0.002f, 0.02f));
    if (with_zeros) {
        std::vector<float> z(size_t(h.groups) * out);
        for (int g = 0; g < h.groups; g++)
            for (int o = 0; o < out; o++) z[size_t(g) * out + o] = static_cast<float>(rng() % (1u << group_bits[g]));
        h.zeros = to_f16(z);
    }
    if (with_perm) {
        h.perm.resize(in);
        for (int i = 0; i < in; i++) h.perm[i] = i;
        std::shuffle(h.perm.begin(), h.perm.end(), rng);
    }
    return h;
}

// The matrix on the device and the qt_qmatrix that names it.
struct DeviceQMatrix {
    Device qweight, units, scales, zeros, perm;
    qt_qmatrix w{};
    explicit DeviceQMatrix(const HostQMatrix& h)
        : qweight(Device::from(h.qweight)), units(Device::from(h.units)), scales(Device::from(h.scales)),
          zeros(h.zeros.empty() ? Device(0) : Device::from(h.zeros)),  // Device(0) holds NULL
          perm(h.perm.empty() ? Device(0) : Device::from(h.perm)) {
        const bool uniform = std::all_of(h.unit_bits.begin(), h.unit_bits.end(), [&](int b) { return b == h.unit_bits[0]; });
        w = qt_qmatrix{qweight.ptr, units.ptr, scales.ptr, zeros.ptr, perm.ptr, h.in, h.out, h.groups, h.qrows,
                       uniform ? h.unit_bits[0] : 0};
        CHECK(qt_qmatrix_prepare(&w, nullptr));
    }
};

// Distance of a fp16 result from the exact v in units of v's fp16 spacing (non-finite: infinite).
double f16_ulps(float got, double v) {
    if (!std::isfinite(got)) return INFINITY;
    int e = 0;
    std::frexp(v, &e);  // |v| = m · 2^e, m in [0.5, 1)
    const double ulp = std::max(std::ldexp(1.0, e - 11), std::ldexp(1.0, -24));
    return std::fabs(got - v) / ulp;
}

// x [rows, in] (F16, original input order) · W^T in double: [rows, out].
std::vector<double> qmatrix_product(const HostQMatrix& h, const std::vector<uint16_t>& x16, int rows) {
    std::vector<double> ref(size_t(rows) * h.out, 0.0);
    for (int k = 0; k < h.in; k++) {
        const int src = h.perm.empty() ? k : h.perm[k];
        for (int o = 0; o < h.out; o++) {
            const double wv = h.weight(k, o);
            for (int r = 0; r < rows; r++) ref[size_t(r) * h.out + o] += f16_value(x16[size_t(r) * h.in + src]) * wv;
        }
    }
    return ref;
}

// qt_qmatrix_gemv (rows 1, 2, 3, 8, 9, 33, 64; F32 and F16 y; += into F32 y) against the double product W·x, and
// qt_qmatrix_dequant value by value, in the original input order. Up to 8 rows take the CUDA-core GEMV
// (QTOOL_QMATRIX_GEMV_ROWS=1 sends 2..8 rows to the tensor cores instead): mixed widths with F32 y take its input
// split over blocks (atomicAdd into y, zeroed first unless +=) when the inputs give every slice a unit (in >= 4096: 2
// splits; 16384 -> 64: 4 splits, each walking unit pairs at 1..2 rows); one width, F16 y and smaller mixes do not
// split. More rows take the tensor cores, whose input splits sum through a cluster (4096 -> 1024: 8 blocks, 8 splits;
// outputs that end inside a block of 128).
void test_qmatrix(const std::string& name, int in, int out, const std::vector<int>& widths,
                  const std::vector<int>& group_rows, bool with_zeros, bool with_perm) {
    const std::string label = "qmatrix " + name;
    run(label, [&] {
        const HostQMatrix h = make_qmatrix(in, out, widths, group_rows, with_zeros, with_perm);
        DeviceQMatrix d(h);
        constexpr int kRows = 64;
        const std::vector<uint16_t> x16 = to_f16(randn(size_t(kRows) * in));
        Device dx = Device::from(x16);
        const std::vector<double> ref = qmatrix_product(h, x16, kRows);
        // The GEMV sums a unit's products in half2 (~1e-3 rounding), F32 y as F16 y.
        constexpr double kLimit = 1e-2;
        for (int rows : {1, 2, 3, 8, 9, 33, 64}) {
            size_t scratch_bytes = 0;
            CHECK(qt_qmatrix_gemv_scratch_bytes(&d.w, rows, &scratch_bytes));
            Device scratch(std::max<size_t>(scratch_bytes, 256));
            const std::vector<double> want(ref.begin(), ref.begin() + size_t(rows) * out);
            for (int y_dtype : {QT_F32, QT_F16}) {
                Device y(size_t(rows) * out * dtype_size(y_dtype));
                y.poison();
                CHECK(qt_qmatrix_gemv(y.ptr, y_dtype, 0, dx.ptr, &d.w, rows, scratch.ptr, scratch_bytes, nullptr));
                record(label + " gemv r" + std::to_string(rows) + " " + dtype_str(y_dtype),
                       rel_l2(download_as(y, size_t(rows) * out, y_dtype), want), kLimit);
            }
            if (rows == 3 || rows == 33) {  // the fused residual add
                const std::vector<float> y0 = randn(size_t(rows) * out);
                Device y = Device::from(y0);
                CHECK(qt_qmatrix_gemv(y.ptr, QT_F32, 1, dx.ptr, &d.w, rows, scratch.ptr, scratch_bytes, nullptr));
                std::vector<double> sum(want);
                for (size_t i = 0; i < sum.size(); i++) sum[i] += y0[i];
                record(label + " gemv r" + std::to_string(rows) + " F32 +=", rel_l2(y.to_host<float>(sum.size()), sum), kLimit);
            }
        }
        Device dw(size_t(out) * in * 2);
        dw.poison();
        CHECK(qt_qmatrix_dequant(dw.ptr, &d.w, nullptr));
        const std::vector<uint16_t> got = dw.to_host<uint16_t>(size_t(out) * in);
        double worst = 0;
        for (int k = 0; k < in; k++) {
            const int src = with_perm ? h.perm[k] : k;
            for (int o = 0; o < out; o++) worst = std::max(worst, f16_ulps(f16_value(got[size_t(o) * in + src]), h.weight(k, o)));
        }
        // Computed in F32 and rounded once to fp16: half a spacing, plus F32's own rounding.
        record(label + " dequant (fp16 ulps)", worst, 0.5 + 1.0 / 1024);
    });
}

// qt_qmatrix_gemv_many: three matrices of one input order (q/k/v-like: mixed widths, all 5-bit, 8 and 4 bits; one
// perm; outputs that end inside a block) in one launch, each y against its double product, at 1, 3 and 17 rows, F32 and
// F16 y and += (F32 y of mixed widths takes the input split); then the argument checks of the set.
void test_qmatrix_many() {
    run("qmatrix gemv_many", [&] {
        std::vector<HostQMatrix> h = {make_qmatrix(4096, 256, {5, 4, 4, 4, 4, 4, 4, 4}, {32}, false, true),
                                      make_qmatrix(4096, 136, {5}, {32}, false, false),
                                      make_qmatrix(4096, 200, {8, 4, 4}, {128}, false, false)};
        h[1].perm = h[2].perm = h[0].perm;
        std::vector<std::unique_ptr<DeviceQMatrix>> d;
        std::vector<qt_qmatrix> w;
        for (const HostQMatrix& m : h) {
            d.push_back(std::make_unique<DeviceQMatrix>(m));
            w.push_back(d.back()->w);
        }
        constexpr int kRows = 17;
        const std::vector<uint16_t> x16 = to_f16(randn(size_t(kRows) * 4096));
        Device dx = Device::from(x16);
        size_t scratch_bytes = 0;
        CHECK(qt_qmatrix_gemv_scratch_bytes(&w[0], kRows, &scratch_bytes));
        Device scratch(scratch_bytes);
        for (int rows : {1, 3, 17})
            for (int mode = 0; mode < 3; mode++) {  // F32, F16, F32 +=
                const int y_dtype = mode == 1 ? QT_F16 : QT_F32;
                std::vector<Device> y;
                std::vector<std::vector<float>> y0;
                std::vector<void*> yp;
                for (const HostQMatrix& m : h) {
                    y0.push_back(randn(size_t(rows) * m.out));
                    if (mode == 2) y.push_back(Device::from(y0.back()));
                    else {
                        y.emplace_back(size_t(rows) * m.out * dtype_size(y_dtype));
                        y.back().poison();
                    }
                    yp.push_back(y.back().ptr);
                }
                CHECK(qt_qmatrix_gemv_many(3, yp.data(), y_dtype, mode == 2, dx.ptr, w.data(), rows, scratch.ptr,
                                           scratch_bytes, nullptr));
                for (size_t i = 0; i < h.size(); i++) {
                    std::vector<double> want = qmatrix_product(h[i], x16, rows);
                    if (mode == 2)
                        for (size_t k = 0; k < want.size(); k++) want[k] += y0[i][k];
                    record("qmatrix gemv_many r" + std::to_string(rows) + " " + (mode == 1 ? "F16" : "F32") +
                               (mode == 2 ? " +=" : "") + " matrix " + std::to_string(i),
                           rel_l2(download_as(y[i], want.size(), y_dtype), want), 1e-2);
                }
            }
        int wrong = 0;
        void* yp[5] = {scratch.ptr, scratch.ptr, scratch.ptr, scratch.ptr, scratch.ptr};
        auto invalid = [&](int status) { wrong += status != QT_ERR_INVALID_ARGUMENT; };
        invalid(qt_qmatrix_gemv_many(0, yp, QT_F32, 0, dx.ptr, w.data(), 1, scratch.ptr, scratch_bytes, nullptr));
        std::vector<qt_qmatrix> five(5, w[0]);
        invalid(qt_qmatrix_gemv_many(5, yp, QT_F32, 0, dx.ptr, five.data(), 1, scratch.ptr, scratch_bytes, nullptr));
        std::vector<qt_qmatrix> bad = w;
        bad[1].perm = nullptr;  // one input order for all, or none
        invalid(qt_qmatrix_gemv_many(3, yp, QT_F32, 0, dx.ptr, bad.data(), 1, scratch.ptr, scratch_bytes, nullptr));
        const HostQMatrix narrow = make_qmatrix(1024, 64, {4}, {32}, false, true);
        DeviceQMatrix dn(narrow);
        bad = {w[0], dn.w};  // another input count
        invalid(qt_qmatrix_gemv_many(2, yp, QT_F32, 0, dx.ptr, bad.data(), 1, scratch.ptr, scratch_bytes, nullptr));
        yp[1] = nullptr;
        invalid(qt_qmatrix_gemv_many(3, yp, QT_F32, 0, dx.ptr, w.data(), 1, scratch.ptr, scratch_bytes, nullptr));
        CHECK(qt_device_synchronize());
        record("qmatrix gemv_many argument checks", wrong, 0);
    });
}

// Every argument check of the qt_qmatrix calls answers QT_ERR_INVALID_ARGUMENT.
void test_qmatrix_errors() {
    run("qmatrix argument checks", [&] {
        const HostQMatrix h = make_qmatrix(64, 16, {4}, {32}, true, true);
        DeviceQMatrix d(h);
        Device x(8 * 64 * 2 + 16), y(8 * 16 * 4), scratch(8 * 64 * 2), weight(16 * 64 * 2);
        size_t need = 0;
        CHECK(qt_qmatrix_gemv_scratch_bytes(&d.w, 2, &need));
        int wrong = need != 2 * 64 * 2;
        auto invalid = [&](int status) { wrong += status != QT_ERR_INVALID_ARGUMENT; };
        auto gemv = [&](const qt_qmatrix& w, int y_dtype, int accumulate, const void* xp, int rows, size_t scratch_bytes) {
            return qt_qmatrix_gemv(y.ptr, y_dtype, accumulate, xp, &w, rows, scratch.ptr, scratch_bytes, nullptr);
        };
        CHECK(gemv(d.w, QT_F32, 1, x.ptr, 2, need));
        invalid(gemv(d.w, QT_F32, 0, x.ptr, 0, need));                                         // rows 0
        invalid(gemv(d.w, QT_F32, 0, x.ptr, 65, scratch.bytes));                               // rows 65
        invalid(gemv(d.w, QT_BF16, 0, x.ptr, 2, need));                                        // y dtype
        invalid(gemv(d.w, QT_F16, 1, x.ptr, 2, need));                                         // += into F16 y
        invalid(gemv(d.w, QT_F32, 0, x.ptr, 2, need - 2));                                     // scratch too small
        invalid(gemv(d.w, QT_F32, 0, static_cast<char*>(x.ptr) + 2, 2, need));                 // x misaligned
        invalid(qt_qmatrix_gemv(y.ptr, QT_F32, 0, x.ptr, nullptr, 2, scratch.ptr, need, nullptr));  // no matrix
        invalid(qt_qmatrix_gemv(nullptr, QT_F32, 0, x.ptr, &d.w, 2, scratch.ptr, need, nullptr));   // no y
        qt_qmatrix bad = d.w;
        bad.in = 48;  // not a multiple of 32
        invalid(gemv(bad, QT_F32, 0, x.ptr, 2, need));
        bad = d.w;
        bad.out = 12;  // not a multiple of 8
        invalid(qt_qmatrix_dequant(weight.ptr, &bad, nullptr));
        bad = d.w;
        bad.qweight = static_cast<const char*>(d.w.qweight) + 4;  // misaligned
        invalid(qt_qmatrix_dequant(weight.ptr, &bad, nullptr));
        bad = d.w;
        bad.uniform_bits = 7;  // no such width
        invalid(gemv(bad, QT_F32, 0, x.ptr, 2, need));
        bad.uniform_bits = 3;  // 4 qweight rows a unit, not 3
        invalid(qt_qmatrix_dequant(weight.ptr, &bad, nullptr));
        bad = d.w;
        bad.units = nullptr;
        invalid(qt_qmatrix_dequant(weight.ptr, &bad, nullptr));
        invalid(qt_qmatrix_dequant(nullptr, &d.w, nullptr));
        invalid(qt_qmatrix_prepare(nullptr, nullptr));
        invalid(qt_qmatrix_prepare(&bad, nullptr));
        CHECK(qt_device_synchronize());
        record("qmatrix argument checks", wrong, 0);
    });
}

// ---- decoding with the position on the device ---------------------------------------------------------

// Inverse frequencies of RoPE with base theta, as HF computes them (F32).
std::vector<float> rope_inv_freq(int head_dim, double theta) {
    std::vector<float> inv(head_dim / 2);
    for (int j = 0; j < head_dim / 2; j++) inv[j] = static_cast<float>(1.0 / std::pow(theta, 2.0 * j / head_dim));
    return inv;
}

// x [rows, heads * head_dim] (whole heads of head_dim) rotated at `pos` in double (the angle an F32 product, as documented).
std::vector<double> ref_rope(const std::vector<float>& x, int head_dim, int pos, const std::vector<float>& inv) {
    std::vector<double> out(x.size());
    const int half = head_dim / 2;
    for (size_t base = 0; base < x.size(); base += head_dim)
        for (int j = 0; j < half; j++) {
            const double angle = static_cast<float>(pos) * inv[j], a = x[base + j], b = x[base + j + half];
            out[base + j] = a * std::cos(angle) - b * std::sin(angle);
            out[base + j + half] = b * std::cos(angle) + a * std::sin(angle);
        }
    return out;
}

struct DecodeShape { int batch, heads, kv_heads, head_dim, max_seq; };

// One qt_decode_attention step at each position on caches whose rows all hold random values (earlier steps'), checked
// against (1) a double reference of RoPE + attention, (2) qt_rope + qt_attention (tensor-core path) on the same
// inputs, and (3) the caches: row pos holds the rotated k and v, every other row is untouched. A position >= max_seq
// must leave everything unwritten and out NaN.
void test_decode_attention(DecodeShape c, std::vector<int> positions) {
    char shape[96];
    snprintf(shape, sizeof shape, "decode attention b%d h%d kv%d d%d max%d", c.batch, c.heads, c.kv_heads, c.head_dim,
             c.max_seq);
    if (!only.empty() && std::string(shape).find(only) == std::string::npos) return;
    const int q_width = c.heads * c.head_dim, kv_width = c.kv_heads * c.head_dim, group = c.heads / c.kv_heads;
    const size_t cache_elems = size_t(c.batch) * c.max_seq * kv_width;
    const std::vector<float> inv = rope_inv_freq(c.head_dim, 10000.0);
    // Keys larger than queries sharpen the softmax, so a wrong scale, mask or merge shows.
    const std::vector<uint16_t> k_cache0 = to_f16(randn(cache_elems, 2.0f)), v_cache0 = to_f16(randn(cache_elems));
    positions.push_back(c.max_seq);  // out of range
    for (int pos : positions) {
        if (pos > c.max_seq) continue;
        char name[160];
        snprintf(name, sizeof name, "%s @%d%s", shape, pos, pos == c.max_seq ? " (out of range)" : "");
        run(name, [&] {
            std::vector<float> q = rounded(randn(size_t(c.batch) * q_width), QT_F16),
                               k = rounded(randn(size_t(c.batch) * kv_width, 2.0f), QT_F16),
                               v = rounded(randn(size_t(c.batch) * kv_width), QT_F16);
            Device dq = upload_as(q, QT_F16), dk = upload_as(k, QT_F16), dv = upload_as(v, QT_F16);
            Device kc = Device::from(k_cache0), vc = Device::from(v_cache0), dinv = Device::from(inv);
            Device dpos = Device::from(std::vector<int>{pos}), out(size_t(c.batch) * q_width * 2);
            size_t scratch_bytes = 0;
            CHECK(qt_decode_attention_scratch_bytes(c.batch, c.max_seq, c.heads, c.kv_heads, c.head_dim, &scratch_bytes));
            Device scratch(scratch_bytes);
            out.poison();
            scratch.poison();
            CHECK(qt_decode_attention(out.ptr, dq.ptr, dk.ptr, dv.ptr, kc.ptr, vc.ptr, c.batch, c.max_seq, c.heads,
                                      c.kv_heads, c.head_dim, static_cast<const int32_t*>(dpos.ptr), dinv.ptr,
                                      scratch.ptr, scratch_bytes, nullptr));
            const std::vector<float> got = download_as(out, size_t(c.batch) * q_width, QT_F16);
            const std::vector<uint16_t> kc_got = kc.to_host<uint16_t>(cache_elems), vc_got = vc.to_host<uint16_t>(cache_elems);
            const std::vector<float> q_got = download_as(dq, q.size(), QT_F16), k_got = download_as(dk, k.size(), QT_F16);

            if (pos == c.max_seq) {
                size_t wrong = 0;
                for (float x : got) wrong += !std::isnan(x);
                for (size_t i = 0; i < cache_elems; i++) wrong += kc_got[i] != k_cache0[i] || vc_got[i] != v_cache0[i];
                for (size_t i = 0; i < q.size(); i++) wrong += q_got[i] != q[i];
                for (size_t i = 0; i < k.size(); i++) wrong += k_got[i] != k[i];
                record(name, double(wrong), 0, "elements written (out must be NaN)");
                return;
            }
            // (3) RoPE in place and the cache rows.
            const std::vector<double> q_rot = ref_rope(q, c.head_dim, pos, inv),
                                      k_rot = ref_rope(k, c.head_dim, pos, inv);
            std::vector<float> both_got(q_got);
            both_got.insert(both_got.end(), k_got.begin(), k_got.end());
            std::vector<double> both_ref(q_rot);
            both_ref.insert(both_ref.end(), k_rot.begin(), k_rot.end());
            const std::vector<uint16_t> k_bits = dk.to_host<uint16_t>(k.size()), v_bits = to_f16(v);
            size_t cache_wrong = 0;
            for (int b = 0; b < c.batch; b++)
                for (int t = 0; t < c.max_seq; t++)
                    for (int e = 0; e < kv_width; e++) {
                        const size_t i = (size_t(b) * c.max_seq + t) * kv_width + e;
                        const uint16_t want_k = t == pos ? k_bits[size_t(b) * kv_width + e] : k_cache0[i];
                        const uint16_t want_v = t == pos ? v_bits[size_t(b) * kv_width + e] : v_cache0[i];
                        cache_wrong += kc_got[i] != want_k || vc_got[i] != want_v;
                    }
            record(std::string(name) + " rope, caches", cache_wrong ? INFINITY : rel_l2(both_got, both_ref), 6e-4,
                   cache_wrong ? std::to_string(cache_wrong) + " cache elements wrong" : "rows != pos untouched");

            // (1) Attention in double over the cache as the step leaves it (rotated q and k rounded once to F16).
            const std::vector<float> q16 = rounded(std::vector<float>(q_rot.begin(), q_rot.end()), QT_F16),
                                     k16 = rounded(std::vector<float>(k_rot.begin(), k_rot.end()), QT_F16);
            std::vector<double> want(size_t(c.batch) * q_width), scores(pos + 1);
            const double scale = 1.0 / std::sqrt(double(c.head_dim));
            for (int b = 0; b < c.batch; b++)
                for (int h = 0; h < c.heads; h++) {
                    const int kvh = h / group;
                    auto key = [&](int t, int d) -> double {
                        return t == pos ? k16[size_t(b) * kv_width + kvh * c.head_dim + d]
                                        : f16_value(k_cache0[(size_t(b) * c.max_seq + t) * kv_width + kvh * c.head_dim + d]);
                    };
                    auto value = [&](int t, int d) -> double {
                        return t == pos ? v[size_t(b) * kv_width + kvh * c.head_dim + d]
                                        : f16_value(v_cache0[(size_t(b) * c.max_seq + t) * kv_width + kvh * c.head_dim + d]);
                    };
                    const float* qrow = &q16[size_t(b) * q_width + size_t(h) * c.head_dim];
                    double mx = -INFINITY, sum = 0;
                    for (int t = 0; t <= pos; t++) {
                        double dot = 0;
                        for (int d = 0; d < c.head_dim; d++) dot += qrow[d] * key(t, d);
                        mx = std::max(mx, scores[t] = dot * scale);
                    }
                    for (int t = 0; t <= pos; t++) sum += (scores[t] = std::exp(scores[t] - mx));
                    double* orow = &want[size_t(b) * q_width + size_t(h) * c.head_dim];
                    for (int t = 0; t <= pos; t++)
                        for (int d = 0; d < c.head_dim; d++) orow[d] += scores[t] / sum * value(t, d);
                }
            record(name, rel_l2(got, want), 1e-3, "vs double RoPE + attention");

            // (2) qt_rope + qt_attention at start_pos pos (16-bit tensor-core path: head_dim <= 128).
            if (c.head_dim > 128) return;
            Device q2 = upload_as(q, QT_F16), k2 = upload_as(k, QT_F16), kc2 = Device::from(k_cache0),
                   vc2 = Device::from(v_cache0), out2(out.bytes);
            CHECK(qt_rope(q2.ptr, QT_F16, c.batch, c.heads, c.head_dim, 1, pos, dinv.ptr, nullptr));
            CHECK(qt_rope(k2.ptr, QT_F16, c.batch, c.kv_heads, c.head_dim, 1, pos, dinv.ptr, nullptr));
            size_t attn_scratch_bytes = 0;
            CHECK(qt_attention_scratch_bytes(QT_F16, c.batch, 1, pos, c.heads, c.kv_heads, c.head_dim, &attn_scratch_bytes));
            Device attn_scratch(attn_scratch_bytes);
            CHECK(qt_attention(out2.ptr, q2.ptr, k2.ptr, dv.ptr, kc2.ptr, vc2.ptr, QT_F16, c.batch, 1, pos, c.max_seq,
                               c.heads, c.kv_heads, c.head_dim, attn_scratch.ptr, attn_scratch_bytes, nullptr));
            const std::vector<float> other = download_as(out2, got.size(), QT_F16);
            record(std::string(name) + " vs qt_attention", rel_l2(got, std::vector<double>(other.begin(), other.end())), 2e-3,
                   k2.to_host<uint16_t>(k.size()) == k_bits ? "rotated k bit-equal to qt_rope's" : "rotated k differs from qt_rope's");
        });
    }
}

// A decoding step of a one-layer model captured once into a CUDA graph (embedding, rmsnorm, gate/up products,
// silu_mul, q/k/v products, qt_decode_attention, o_proj added into the residual, qt_cast and a device copy of the
// results), replayed at several positions changing only the device's position and token id; each replay is compared
// with the same calls run directly on a twin set of buffers. Also: a call failing inside a capture fails qt_graph_end.
void test_graph() {
    run("graph", [&] {
        const int heads = 8, kv_heads = 2, head_dim = 64, max_seq = 600, hidden = heads * head_dim, inter = 1024,
                  vocab = 100, kv_width = kv_heads * head_dim;
        const float eps = 1e-5f;
        void* stream = nullptr;
        CHECK(qt_stream_create(&stream));
        CHECK(qt_linear_prepare(stream));  // cuBLAS's handle and this stream's workspace, before any capture
        Device table = Device::from(randn(size_t(vocab) * hidden)), norm_w = Device::from(uniform(hidden, 0.5f, 1.5f));
        Device wg = upload_as(randn(size_t(inter) * hidden, 0.05f), QT_F16), wu = upload_as(randn(size_t(inter) * hidden, 0.05f), QT_F16),
               wq = upload_as(randn(size_t(hidden) * inter, 0.05f), QT_F16), wk = upload_as(randn(size_t(kv_width) * inter, 0.05f), QT_F16),
               wv = upload_as(randn(size_t(kv_width) * inter, 0.05f), QT_F16), wo = upload_as(randn(size_t(hidden) * hidden, 0.05f), QT_F16);
        Device inv = Device::from(rope_inv_freq(head_dim, 10000.0)), pos(4), id(4);
        const std::vector<uint16_t> k0 = to_f16(randn(size_t(max_seq) * kv_width)), v0 = to_f16(randn(size_t(max_seq) * kv_width));
        size_t scratch_bytes = 0;
        CHECK(qt_decode_attention_scratch_bytes(1, max_seq, heads, kv_heads, head_dim, &scratch_bytes));
        struct Buffers {
            Device x, h, gate, up, q, k, v, att, kc, vc, scratch, x16, att_copy;
        };
        auto make = [&] {
            return Buffers{Device(hidden * 4), Device(hidden * 2), Device(inter * 2), Device(inter * 2), Device(hidden * 2),
                           Device(kv_width * 2), Device(kv_width * 2), Device(hidden * 2), Device::from(k0), Device::from(v0),
                           Device(scratch_bytes), Device(hidden * 2), Device(hidden * 2)};
        };
        Buffers direct = make(), graphed = make();
        auto step = [&](Buffers& b) {
            auto linear = [&](Device& out, int out_dtype, Device& x, Device& w, int in_f, int out_f, int accumulate) {
                CHECK(qt_linear(out.ptr, out_dtype, x.ptr, QT_F16, w.ptr, QT_F16, nullptr, 0, 1, in_f, out_f, accumulate,
                                nullptr, 0, stream));
            };
            CHECK(qt_embedding(b.x.ptr, table.ptr, QT_F32, id.ptr, 1, hidden, vocab, stream));
            CHECK(qt_rmsnorm(b.h.ptr, QT_F16, b.x.ptr, norm_w.ptr, QT_F32, 1, hidden, eps, stream));
            linear(b.gate, QT_F16, b.h, wg, hidden, inter, 0);
            linear(b.up, QT_F16, b.h, wu, hidden, inter, 0);
            CHECK(qt_silu_mul(b.gate.ptr, b.gate.ptr, b.up.ptr, QT_F16, inter, stream));
            linear(b.q, QT_F16, b.gate, wq, inter, hidden, 0);
            linear(b.k, QT_F16, b.gate, wk, inter, kv_width, 0);
            linear(b.v, QT_F16, b.gate, wv, inter, kv_width, 0);
            CHECK(qt_decode_attention(b.att.ptr, b.q.ptr, b.k.ptr, b.v.ptr, b.kc.ptr, b.vc.ptr, 1, max_seq, heads, kv_heads,
                                      head_dim, static_cast<const int32_t*>(pos.ptr), inv.ptr, b.scratch.ptr, scratch_bytes,
                                      stream));
            linear(b.x, QT_F32, b.att, wo, hidden, hidden, 1);
            CHECK(qt_cast(b.x16.ptr, QT_F16, b.x.ptr, QT_F32, hidden, stream));
            CHECK(qt_memcpy_dtod_async(b.att_copy.ptr, b.att.ptr, hidden * 2, stream));
        };
        void* graph = nullptr;
        int token = 7;
        for (int p : {3, 4, 5, 130, 257, 599}) {
            token = (token * 31 + 11) % vocab;
            CHECK(qt_memcpy_htod(pos.ptr, &p, 4, stream));
            CHECK(qt_memcpy_htod(id.ptr, &token, 4, stream));
            step(direct);  // the first one also loads every kernel before the capture
            if (graph == nullptr) {
                CHECK(qt_graph_begin(stream));
                step(graphed);
                CHECK(qt_graph_end(stream, &graph));
            }
            for (Device* d : {&graphed.x, &graphed.x16, &graphed.att_copy}) CHECK(qt_memset_async(d->ptr, 0xff, d->bytes, stream));
            CHECK(qt_graph_launch(graph, stream));
            CHECK(qt_stream_synchronize(stream));
            double worst = 0;
            size_t differ = 0;
            auto compare = [&](const Device& a, const Device& g, size_t n, int dtype) {
                const std::vector<float> want = download_as(a, n, dtype), have = download_as(g, n, dtype);
                for (size_t i = 0; i < n; i++) differ += !(want[i] == have[i]);
                worst = std::max(worst, rel_l2(have, std::vector<double>(want.begin(), want.end())));
            };
            compare(direct.x, graphed.x, hidden, QT_F32);
            compare(direct.x16, graphed.x16, hidden, QT_F16);
            compare(direct.att_copy, graphed.att_copy, hidden, QT_F16);
            compare(direct.kc, graphed.kc, size_t(max_seq) * kv_width, QT_F16);
            compare(direct.vc, graphed.vc, size_t(max_seq) * kv_width, QT_F16);
            record("graph replay vs direct calls @" + std::to_string(p), worst, 1e-3,
                   differ == 0 ? "bit-identical" : std::to_string(differ) + " elements differ");
        }
        CHECK(qt_graph_destroy(graph));

        // A call that fails its checks inside a capture queues nothing; qt_graph_end must still refuse the graph,
        // and the stream must work afterwards. The legacy stream cannot be captured; a first cuBLAS product on a
        // stream inside a capture is refused with advice.
        int wrong = 0;
        CHECK(qt_graph_begin(stream));
        Buffers& b = graphed;
        wrong += qt_decode_attention(b.att.ptr, b.q.ptr, b.k.ptr, b.v.ptr, b.kc.ptr, b.vc.ptr, 1, max_seq, heads, kv_heads,
                                     12, static_cast<const int32_t*>(pos.ptr), inv.ptr, b.scratch.ptr, scratch_bytes,
                                     stream) != QT_ERR_INVALID_ARGUMENT;
        void* refused = nullptr;
        wrong += qt_graph_end(stream, &refused) == QT_OK || refused != nullptr || !strstr(qt_last_error(), "head_dim");
        std::string note = qt_last_error();
        CHECK(qt_memset_async(b.att.ptr, 0, b.att.bytes, stream));
        CHECK(qt_stream_synchronize(stream));
        // A waiting call (qt_memcpy_dtod synchronizes) breaks the capture: it fails, and so does qt_graph_end.
        CHECK(qt_graph_begin(stream));
        wrong += qt_memcpy_dtod(b.att_copy.ptr, b.att.ptr, b.att.bytes, stream) == QT_OK;
        wrong += qt_graph_end(stream, &refused) == QT_OK;
        CHECK(qt_memset_async(b.att.ptr, 0, b.att.bytes, stream));
        CHECK(qt_stream_synchronize(stream));
        wrong += qt_graph_begin(nullptr) != QT_ERR_INVALID_ARGUMENT;
        void* fresh = nullptr;
        CHECK(qt_stream_create(&fresh));
        CHECK(qt_graph_begin(fresh));
        wrong += qt_linear(b.q.ptr, QT_F16, b.gate.ptr, QT_F16, wq.ptr, QT_F16, nullptr, 0, 1, inter, hidden, 0, nullptr,
                           0, fresh) != QT_ERR_INVALID_ARGUMENT || !strstr(qt_last_error(), "qt_linear_prepare");
        wrong += qt_graph_end(fresh, &refused) == QT_OK;
        CHECK(qt_stream_destroy(fresh));
        CHECK(qt_stream_destroy(stream));
        record("graph: failed calls inside a capture", wrong, 0, note.substr(0, 110));
    });
}

// ---- timings ----------------------------------------------------------------------------------------

double median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Median milliseconds of `iters` event-timed runs of fn (queuing its work on `stream`), after 3 warm-ups.
double time_ms(const std::function<void()>& fn, int iters = 20, void* stream = nullptr) {
    for (int i = 0; i < 3; i++) fn();
    void *start, *stop;
    CHECK(qt_event_create(&start));
    CHECK(qt_event_create(&stop));
    std::vector<float> times;
    for (int i = 0; i < iters; i++) {
        CHECK(qt_event_record(start, stream));
        fn();
        CHECK(qt_event_record(stop, stream));
        CHECK(qt_event_synchronize(stop));
        float ms = 0;
        CHECK(qt_event_elapsed_ms(start, stop, &ms));
        times.push_back(ms);
    }
    qt_event_destroy(start);
    qt_event_destroy(stop);
    return median(times);
}

// ---- AWQ clip search ---------------------------------------------------------------------------------------------

// Awq.clipCandidates and Awq.quantizeGroup in float arithmetic as Java does them; the objective dᵀ·H_g·d in double.
float fp16_round(float v) { return __half2float(__float2half_rn(v)); }

std::vector<std::array<float, 2>> ref_clip_candidates(float min, float max, float abs_max, bool two_sided) {
    std::vector<std::array<float, 2>> c;
    for (int k = 0; k < 10; k++) {
        float m = abs_max * (1 - float(k) / 20);
        c.push_back({-m, m});
    }
    if (two_sided)
        for (int a = 0; a < 10; a++)
            for (int b = 0; b < 10; b++) c.push_back({min * (1 - float(a) / 20), max * (1 - float(b) / 20)});
    return c;
}

void ref_quantize_group(const float* w, int n, int bits, bool zero_point, float* deq) {
    int max_int, zero;
    float scale;
    if (zero_point) {
        float mx = -INFINITY, mn = INFINITY;
        for (int i = 0; i < n; i++) mx = std::max(mx, w[i]), mn = std::min(mn, w[i]);
        max_int = (1 << bits) - 1;
        scale = fp16_round(std::max(mx - mn, 1e-5f) / max_int);
        zero = int(std::min(std::max(-std::rint(double(mn / scale)), 0.0), double(max_int)));
    } else {
        float max_abs = 1e-5f;
        for (int i = 0; i < n; i++) max_abs = std::max(max_abs, std::fabs(w[i]));
        int half = 1 << (bits - 1);
        max_int = 2 * half - 1;
        scale = fp16_round(max_abs / float(half - 1));
        zero = half;
    }
    for (int i = 0; i < n; i++) {
        int q = int(std::min(std::max(std::rint(double(w[i] / scale)) + zero, 0.0), double(max_int)));
        deq[i] = float(q - zero) * scale;
    }
}

// qt_awq_clip_search against the host search: each {lo, hi} must be one of its group's candidates, with an objective
// within 1e-4 (relative) of the best candidate's (the argmin itself may flip on near-ties between fp32 and double).
void test_awq_clip(int out, int in, int group_size, int bits, bool zero_point, bool two_sided) {
    const int tokens = 256, width = group_size == -1 ? in : group_size, groups = (in + width - 1) / width;
    char name[128];
    snprintf(name, sizeof name, "awqclip %dx%d g%d %db %s%s", out, in, group_size, bits, zero_point ? "zero-point" : "sym",
             two_sided ? " two-sided" : "");
    run(name, [&] {
        std::vector<float> w = randn(size_t(out) * in, 0.02f), x = randn(size_t(tokens) * in);
        for (size_t i = 0; i < w.size(); i += 37) w[i] *= 6;  // outliers, so that clipping pays
        for (int t = 0; t < tokens; t++)
            for (int i = 0; i < in; i += 9) x[size_t(t) * in + i] *= 4;  // uneven input channels
        Device dw = Device::from(w), dx = Device::from(x), gram(size_t(in) * in * 4), range(size_t(out) * groups * 2 * 4);
        CHECK(qt_memset_async(gram.ptr, 0, gram.bytes, nullptr));
        CHECK(qt_gram_accumulate(gram.ptr, dx.ptr, tokens, in, nullptr));
        range.poison();
        CHECK(qt_awq_clip_search(static_cast<float*>(range.ptr), dw.ptr, gram.ptr, out, in, group_size, bits, zero_point,
                                 two_sided, nullptr));
        std::vector<float> got = range.to_host<float>(size_t(out) * groups * 2);
        double worst = 0;
        int strangers = 0;
        std::vector<float> cur(width), deq(width);
        std::vector<double> h(size_t(width) * width), d(width);
        for (int g = 0; g < groups; g++) {
            const int g0 = g * width, n = std::min(in, g0 + width) - g0;
            std::fill(h.begin(), h.end(), 0.0);
            for (int t = 0; t < tokens; t++)
                for (int i = 0; i < n; i++)
                    for (int j = 0; j < n; j++) h[size_t(i) * n + j] += double(x[size_t(t) * in + g0 + i]) * x[size_t(t) * in + g0 + j];
            for (int o = 0; o < out; o++) {
                const float* wg = &w[size_t(o) * in + g0];
                float mn = 0, mx = 0;
                for (int i = 0; i < n; i++) mn = std::min(mn, wg[i]), mx = std::max(mx, wg[i]);
                double best = INFINITY, chosen = NAN;
                const float lo = got[2 * (size_t(o) * groups + g)], hi = got[2 * (size_t(o) * groups + g) + 1];
                for (const auto& c : ref_clip_candidates(mn, mx, std::max(-mn, mx), two_sided)) {
                    for (int i = 0; i < n; i++) cur[i] = std::min(std::max(wg[i], c[0]), c[1]);
                    ref_quantize_group(cur.data(), n, bits, zero_point, deq.data());
                    for (int i = 0; i < n; i++) d[i] = double(deq[i]) - wg[i];
                    double err = 0;
                    for (int i = 0; i < n; i++) {
                        double s = 0;
                        for (int j = 0; j < n; j++) s += h[size_t(i) * n + j] * d[j];
                        err += d[i] * s;
                    }
                    best = std::min(best, err);
                    if (c[0] == lo && c[1] == hi && std::isnan(chosen)) chosen = err;
                }
                if (std::isnan(chosen)) strangers++;
                else worst = std::max(worst, (chosen - best) / std::max(best, 1e-30));
            }
        }
        record(name, strangers ? INFINITY : worst, 1e-4,
               strangers ? std::to_string(strangers) + " ranges are no candidate" : "objective over the best candidate's");
    });
}

void test_awq_clip_errors() {
    run("awqclip group wider than 128 refused", [&] {
        Device b(1024);
        const int status = qt_awq_clip_search(static_cast<float*>(b.ptr), b.ptr, b.ptr, 4, 576, -1, 4, 1, 1, nullptr);
        record("awqclip group wider than 128 refused", status == QT_ERR_UNSUPPORTED ? 0 : 1, 0,
               std::string("QT_ERR_UNSUPPORTED: \"") + qt_last_error() + "\"");
    });
}

std::string bench_only;  // --bench NAME: only the timing sections whose name contains NAME

// Random normal values for timings of large tensors: a 1 Mi block of fresh draws, repeated (drawing hundreds of
// millions costs seconds of host time; repeated random data still times like random data, unlike zeros).
std::vector<float> randn_tiled(size_t n, float scale = 1.0f) {
    std::vector<float> block = randn(std::min<size_t>(n, size_t(1) << 20), scale), v(n);
    for (size_t i = 0; i < n; i++) v[i] = block[i % block.size()];
    return v;
}

bool bench_section(const char* name) { return bench_only.empty() || std::string(name).find(bench_only) != std::string::npos; }

void bench_attention() {
    struct Shape { int batch, seq, heads, kv_heads, head_dim; };
    for (int dtype : {QT_F32, QT_F16}) {
        for (Shape sh : {Shape{1, 2048, 32, 32, 128}, Shape{1, 2048, 32, 8, 128}, Shape{4, 512, 32, 8, 128},
                         Shape{1, 2048, 9, 3, 64}, Shape{16, 2048, 32, 32, 128}}) {
            if (dtype == QT_F32 && sh.batch == 16) continue;
            const int max_seq = sh.seq + 1;
            const size_t es = dtype_size(dtype);
            const size_t q_elems = size_t(sh.batch) * sh.seq * sh.heads * sh.head_dim;
            const size_t kv_elems = size_t(sh.batch) * sh.seq * sh.kv_heads * sh.head_dim;
            Device q = upload_as(randn_tiled(q_elems), dtype), k = upload_as(randn_tiled(kv_elems), dtype),
                   v = upload_as(randn_tiled(kv_elems), dtype);
            Device out(q_elems * es), kc(size_t(sh.batch) * max_seq * sh.kv_heads * sh.head_dim * es), vc(kc.bytes);
            double ms = time_ms([&] {
                CHECK(qt_attention(out.ptr, q.ptr, k.ptr, v.ptr, kc.ptr, vc.ptr, dtype, sh.batch, sh.seq, 0, max_seq,
                                   sh.heads, sh.kv_heads, sh.head_dim, nullptr, 0, nullptr));
            });
            // Causal: query s sees s + 1 keys; QK^T and PV are 2 flops per multiply-add each.
            double flops = 4.0 * sh.batch * sh.heads * sh.head_dim * (double(sh.seq) * (sh.seq + 1) / 2);
            char label[128];
            snprintf(label, sizeof label, "attention %s prefill b%d s%d h%d kv%d d%d", dtype_str(dtype), sh.batch, sh.seq,
                     sh.heads, sh.kv_heads, sh.head_dim);
            printf("  %-58s %10.3f ms  %6.1f TFLOP/s\n", label, ms, flops / (ms * 1e-3) / 1e12);

            // One decode step after the prefill (positions 0..seq-1 hold keys): memory-bound, so GB/s of cache read.
            Device q1 = upload_as(randn(size_t(sh.batch) * sh.heads * sh.head_dim), dtype);
            Device k1 = upload_as(randn(size_t(sh.batch) * sh.kv_heads * sh.head_dim), dtype),
                   v1 = upload_as(randn(size_t(sh.batch) * sh.kv_heads * sh.head_dim), dtype);
            size_t scratch_bytes = 0;
            CHECK(qt_attention_scratch_bytes(dtype, sh.batch, 1, sh.seq, sh.heads, sh.kv_heads, sh.head_dim, &scratch_bytes));
            Device scratch(scratch_bytes), out1(size_t(sh.batch) * sh.heads * sh.head_dim * es);
            double ms1 = time_ms([&] {
                CHECK(qt_attention(out1.ptr, q1.ptr, k1.ptr, v1.ptr, kc.ptr, vc.ptr, dtype, sh.batch, 1, sh.seq, max_seq,
                                   sh.heads, sh.kv_heads, sh.head_dim, scratch.ptr, scratch_bytes, nullptr));
            });
            double bytes = 2.0 * es * sh.batch * double(sh.seq + 1) * sh.kv_heads * sh.head_dim;
            snprintf(label, sizeof label, "attention %s decode  b%d at %d h%d kv%d d%d", dtype_str(dtype), sh.batch,
                     sh.seq, sh.heads, sh.kv_heads, sh.head_dim);
            printf("  %-58s %10.3f ms  %6.1f GB/s of cache\n", label, ms1, bytes / (ms1 * 1e-3) / 1e9);
        }
    }
}

void bench_linear() {
    // The old reference points: F32 x through the activation cast, and SGEMM.
    for (int dtype : {QT_BF16, QT_F32}) {
        const int rows = 2048, in = 4096, out_f = 4096;
        Device x = Device::from(randn(size_t(rows) * in));
        Device dw = upload_as(randn(size_t(out_f) * in, 0.02f), dtype);
        Device out(size_t(rows) * out_f * 4);
        size_t scratch_bytes = 0;
        CHECK(qt_linear_scratch_bytes(rows, in, QT_F32, dtype, &scratch_bytes));
        Device scratch(scratch_bytes);
        double ms = time_ms([&] {
            CHECK(qt_linear(out.ptr, QT_F32, x.ptr, QT_F32, dw.ptr, dtype, nullptr, 0, rows, in, out_f, 0, scratch.ptr,
                            scratch_bytes, nullptr));
        });
        char label[128];
        snprintf(label, sizeof label, "linear %s %dx%d->%d (x F32, incl. cast)", dtype_str(dtype), rows, in, out_f);
        printf("  %-58s %10.3f ms  %6.1f TFLOP/s\n", label, ms, 2.0 * rows * in * out_f / (ms * 1e-3) / 1e12);
    }
    // Llama-2-7B's products with F16 activations: separate and fused q/k/v and gate/up, the accumulating o/down.
    struct Gemm { int in, out_f, out_dtype; bool accumulate; const char* what; };
    for (int rows : {2048, 32768}) {
        for (Gemm g : {Gemm{4096, 4096, QT_F16, false, "q (or k, v)"}, Gemm{4096, 12288, QT_F16, false, "q+k+v fused"},
                       Gemm{4096, 4096, QT_F32, true, "o, += F32"}, Gemm{4096, 11008, QT_F16, false, "gate (or up)"},
                       Gemm{4096, 22016, QT_F16, false, "gate+up fused"}, Gemm{11008, 4096, QT_F32, true, "down, += F32"},
                       Gemm{4096, 32000, QT_F32, false, "lm_head"}}) {
            Device x = upload_as(randn_tiled(size_t(rows) * g.in), QT_F16), w = upload_as(randn_tiled(size_t(g.out_f) * g.in, 0.02f), QT_F16);
            Device out = g.accumulate ? Device::from(randn_tiled(size_t(rows) * g.out_f)) : Device(size_t(rows) * g.out_f * dtype_size(g.out_dtype));
            double ms = time_ms([&] {
                CHECK(qt_linear(out.ptr, g.out_dtype, x.ptr, QT_F16, w.ptr, QT_F16, nullptr, 0, rows, g.in, g.out_f,
                                g.accumulate, nullptr, 0, nullptr));
            }, 10);
            char label[128];
            snprintf(label, sizeof label, "linear F16 %dx%d->%d %s", rows, g.in, g.out_f, g.what);
            printf("  %-58s %10.3f ms  %6.1f TFLOP/s\n", label, ms, 2.0 * rows * g.in * g.out_f / (ms * 1e-3) / 1e12);
        }
    }
}

// One Llama-2-7B decoder layer on the fp16 path as qtool.model.Forward runs it (F16 activations, F32 residual),
// each op timed with events; then the whole forward estimated as 32 layers + the final norm, lm_head and cross
// entropy in 512-row chunks.
void bench_layer() {
    const int hidden = 4096, heads = 32, head_dim = 128, inter = 11008, vocab = 32000, layers = 32;
    for (int batch : {1, 16}) {
        const int seq = 2048, rows = batch * seq;
        const float eps = 1e-5f;
        Device x = Device::from(randn_tiled(size_t(rows) * hidden)), normed(size_t(rows) * hidden * 2);
        Device q(size_t(rows) * hidden * 2), k(q.bytes), v(q.bytes), attn(q.bytes), gate(size_t(rows) * inter * 2), up(gate.bytes);
        Device kc(size_t(batch) * seq * hidden * 2), vc(kc.bytes);
        Device norm_w = Device::from(uniform(hidden, 0.5f, 1.5f));
        Device wq = upload_as(randn_tiled(size_t(hidden) * hidden, 0.02f), QT_F16), wk = upload_as(randn_tiled(size_t(hidden) * hidden, 0.02f), QT_F16),
               wv = upload_as(randn_tiled(size_t(hidden) * hidden, 0.02f), QT_F16), wo = upload_as(randn_tiled(size_t(hidden) * hidden, 0.01f), QT_F16),
               wg = upload_as(randn_tiled(size_t(inter) * hidden, 0.02f), QT_F16), wu = upload_as(randn_tiled(size_t(inter) * hidden, 0.02f), QT_F16),
               wd = upload_as(randn_tiled(size_t(hidden) * inter, 0.01f), QT_F16);
        std::vector<float> inv(head_dim / 2);
        for (int j = 0; j < head_dim / 2; j++) inv[j] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * j / head_dim));
        Device dinv = Device::from(inv);
        auto lin = [&](Device& out, int out_dtype, Device& in, Device& w, int in_f, int out_f, bool acc) {
            CHECK(qt_linear(out.ptr, out_dtype, in.ptr, QT_F16, w.ptr, QT_F16, nullptr, 0, rows, in_f, out_f, acc ? 1 : 0,
                            nullptr, 0, nullptr));
        };
        std::vector<std::pair<const char*, std::function<void()>>> ops = {
            {"rmsnorm -> F16", [&] { CHECK(qt_rmsnorm(normed.ptr, QT_F16, x.ptr, norm_w.ptr, QT_F32, rows, hidden, eps, nullptr)); }},
            {"q_proj", [&] { lin(q, QT_F16, normed, wq, hidden, hidden, false); }},
            {"k_proj", [&] { lin(k, QT_F16, normed, wk, hidden, hidden, false); }},
            {"v_proj", [&] { lin(v, QT_F16, normed, wv, hidden, hidden, false); }},
            {"rope q", [&] { CHECK(qt_rope(q.ptr, QT_F16, rows, heads, head_dim, seq, 0, dinv.ptr, nullptr)); }},
            {"rope k", [&] { CHECK(qt_rope(k.ptr, QT_F16, rows, heads, head_dim, seq, 0, dinv.ptr, nullptr)); }},
            {"attention (incl. cache store)", [&] {
                CHECK(qt_attention(attn.ptr, q.ptr, k.ptr, v.ptr, kc.ptr, vc.ptr, QT_F16, batch, seq, 0, seq, heads, heads,
                                   head_dim, nullptr, 0, nullptr));
            }},
            {"o_proj += residual", [&] { lin(x, QT_F32, attn, wo, hidden, hidden, true); }},
            {"rmsnorm -> F16 ", [&] { CHECK(qt_rmsnorm(normed.ptr, QT_F16, x.ptr, norm_w.ptr, QT_F32, rows, hidden, eps, nullptr)); }},
            {"gate_proj", [&] { lin(gate, QT_F16, normed, wg, hidden, inter, false); }},
            {"up_proj", [&] { lin(up, QT_F16, normed, wu, hidden, inter, false); }},
            {"silu_mul", [&] { CHECK(qt_silu_mul(gate.ptr, gate.ptr, up.ptr, QT_F16, size_t(rows) * inter, nullptr)); }},
            {"down_proj += residual", [&] { lin(x, QT_F32, gate, wd, inter, hidden, true); }},
        };
        const int iters = batch == 1 ? 20 : 5;
        std::vector<void*> events(ops.size() + 1);
        for (auto& e : events) CHECK(qt_event_create(&e));
        std::vector<std::vector<float>> times(ops.size());
        for (int it = 0; it < iters + 2; it++) {
            CHECK(qt_event_record(events[0], nullptr));
            for (size_t o = 0; o < ops.size(); o++) {
                ops[o].second();
                CHECK(qt_event_record(events[o + 1], nullptr));
            }
            CHECK(qt_event_synchronize(events.back()));
            if (it < 2) continue;  // warm-up
            for (size_t o = 0; o < ops.size(); o++) {
                float ms = 0;
                CHECK(qt_event_elapsed_ms(events[o], events[o + 1], &ms));
                times[o].push_back(ms);
            }
        }
        for (auto& e : events) qt_event_destroy(e);
        printf("\n  Llama-2-7B layer, fp16 path, %dx%d tokens (median of %d):\n", batch, seq, iters);
        double layer = 0, gemm = 0, attention = 0;
        for (size_t o = 0; o < ops.size(); o++) {
            double ms = median(times[o]);
            layer += ms;
            std::string n = ops[o].first;
            if (n.find("proj") != std::string::npos) gemm += ms;
            if (n.find("attention") != std::string::npos) attention += ms;
            printf("    %-40s %9.3f ms\n", ops[o].first, ms);
        }
        // Final norm + lm_head + cross entropy, as Forward.nll runs them: 512-row chunks.
        const int chunk = 512;
        Device logits(size_t(chunk) * vocab * 4), nll(chunk * 4), lm = upload_as(randn_tiled(size_t(vocab) * hidden, 0.02f), QT_F16);
        std::vector<int> tg(chunk);
        for (int i = 0; i < chunk; i++) tg[i] = (i * 7919) % vocab;
        Device targets = Device::from(tg);
        double head_ms = time_ms([&] {
            CHECK(qt_rmsnorm(normed.ptr, QT_F16, x.ptr, norm_w.ptr, QT_F32, chunk, hidden, eps, nullptr));
            CHECK(qt_linear(logits.ptr, QT_F32, normed.ptr, QT_F16, lm.ptr, QT_F16, nullptr, 0, chunk, hidden, vocab, 0,
                            nullptr, 0, nullptr));
            CHECK(qt_cross_entropy(nll.ptr, logits.ptr, targets.ptr, chunk, vocab, nullptr));
        }, 10) * (rows / chunk);
        const double total = layers * layer + head_ms;
        printf("    %-40s %9.3f ms  (GEMM %.3f, attention %.3f, other %.3f)\n", "layer total", layer, gemm, attention,
               layer - gemm - attention);
        printf("    %-40s %9.3f ms\n", "final norm + lm_head + CE (all rows)", head_ms);
        printf("    %-40s %9.1f ms  = %.0f tok/s  (GEMM %.1f ms, attention %.1f ms)\n", "estimated forward (32 layers)",
               total, rows / (total * 1e-3), layers * gemm, layers * attention);
    }
}

// Reads every 16-byte word of up to 4 arrays once (XOR-folded; the sink is written only if the fold hits a constant,
// which keeps the loads): the time a kernel needs just to read a matrix's bytes, the ceiling its GEMV can approach.
struct ReadSpans {
    const uint4* p[4];
    size_t n[4];
};
__global__ void read_spans(ReadSpans s, unsigned* sink) {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");  // chained: the next read may start at once
#endif
    const size_t stride = size_t(gridDim.x) * blockDim.x, first = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    uint32_t fold = 0;
    for (int a = 0; a < 4; a++) {
        size_t i = first;
        for (; i + 3 * stride < s.n[a]; i += 4 * stride) {  // four loads in flight per thread
            uint4 v[4];
#pragma unroll
            for (int k = 0; k < 4; k++) v[k] = __ldg(s.p[a] + i + k * stride);
#pragma unroll
            for (int k = 0; k < 4; k++) fold ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
        }
        for (; i < s.n[a]; i += stride) {
            const uint4 v = __ldg(s.p[a] + i);
            fold ^= v.x ^ v.y ^ v.z ^ v.w;
        }
    }
    if (fold == 0x9e3779b9u) *sink = fold;
}

// A random qt_qmatrix to time, in enough copies (> 200 MB) that the 50 MB L2 holds none of them between uses.
// Random words are random codes of any width. GPTQ: group 128 with zeros, every unit `bits` wide (mixed: the last 8,
// so that the mixed-width walk is timed). exl2: no zeros, group 128, widths in EXL2's decreasing segments averaging
// 4.125 bits (1/16 at 8 and 6, 2/16 at 5, 8/16 at 4, 2/16 at 3 and 2).
struct BenchQMatrix {
    int bits, in, out;
    bool perm, mixed, exl2;
    std::vector<Device> buffers;
    std::vector<qt_qmatrix> mats;
    size_t matrix_bytes = 0;

    BenchQMatrix(int bits_, int in_, int out_, bool perm_, bool mixed_, bool exl2_ = false)
        : bits(bits_), in(in_), out(out_), perm(perm_), mixed(mixed_), exl2(exl2_) {
        static const int kExl2Widths[16] = {8, 6, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4, 3, 3, 2, 2};
        const int units = in / 32, groups = in / 128;
        std::vector<int32_t> unit_rows;
        int qrows = 0;
        for (int u = 0; u < units; u++) {
            const int b = exl2 ? kExl2Widths[u * 16 / units] : mixed && u == units - 1 ? 8 : bits;
            unit_rows.push_back(qrows);
            unit_rows.push_back((u / 4) << 8 | b);
            qrows += b;
        }
        std::vector<uint32_t> qweight(size_t(qrows) * out);
        for (auto& v : qweight) v = static_cast<uint32_t>(rng());
        std::vector<float> zf(size_t(groups) * out);
        for (auto& z : zf) z = static_cast<float>(rng() % (1u << bits));
        const std::vector<uint16_t> scales = to_f16(uniform(size_t(groups) * out, 0.002f, 0.02f)), zeros = to_f16(zf);
        std::vector<int32_t> order(in);
        for (int i = 0; i < in; i++) order[i] = i;
        std::shuffle(order.begin(), order.end(), rng);
        matrix_bytes = (qweight.size() + unit_rows.size()) * 4 + scales.size() * 2 + (exl2 ? 0 : zeros.size() * 2);
        const int copies = static_cast<int>(std::max<size_t>(2, (size_t(200) << 20) / matrix_bytes + 1));
        buffers.reserve(5 * copies + 1);
        buffers.push_back(Device::from(order));
        const void* dperm = perm ? buffers[0].ptr : nullptr;
        for (int k = 0; k < copies; k++) {
            buffers.push_back(Device::from(qweight));
            buffers.push_back(Device::from(unit_rows));
            buffers.push_back(Device::from(scales));
            buffers.push_back(exl2 ? Device(0) : Device::from(zeros));
            const Device* b = &buffers[buffers.size() - 4];
            mats.push_back(qt_qmatrix{b[0].ptr, b[1].ptr, b[2].ptr, b[3].ptr, dperm, in, out, groups, qrows,
                                      exl2 || mixed ? 0 : bits});
            CHECK(qt_qmatrix_prepare(&mats.back(), nullptr));
        }
    }

    // µs per product of `rows` rows (F32 y), and the GB/s of the bytes it reads (matrix, x) and writes (y).
    std::pair<double, double> time(int rows) const {
        Device x = upload_as(randn(size_t(64) * in), QT_F16), y(size_t(64) * out * 4), scratch(size_t(64) * in * 2);
        const double ms = time_ms([&] {
            for (const qt_qmatrix& w : mats)
                CHECK(qt_qmatrix_gemv(y.ptr, QT_F32, 0, x.ptr, &w, rows, scratch.ptr, scratch.bytes, nullptr));
        }) / mats.size();
        const double bytes = double(matrix_bytes) + 2.0 * rows * in + 4.0 * rows * out;
        return {ms * 1e3, bytes / (ms * 1e-3) / 1e9};
    }

    // µs to read each copy's arrays once (read_spans, the best of a few grid sizes): the ceiling for time(). Chained:
    // each read a dependent launch (as qt_qmatrix_gemv is on sm_90), the next starting while the last one drains.
    double read_us(bool chained) const {
        Device sink(4);
        qt_device_info info{};
        CHECK(qt_device_info_get(0, &info));
        double best = 1e30;
        for (int per_sm : {2, 4, 8, 16}) {
            const double ms = time_ms([&] {
                for (size_t k = 0; k < mats.size(); k++) {
                    ReadSpans spans{};
                    for (int a = 0; a < 4; a++) {
                        spans.p[a] = static_cast<const uint4*>(buffers[1 + 4 * k + a].ptr);
                        spans.n[a] = buffers[1 + 4 * k + a].bytes / 16;
                    }
                    cudaLaunchConfig_t config = {};
                    config.gridDim = dim3(info.multiprocessor_count * per_sm);
                    config.blockDim = dim3(256);
                    cudaLaunchAttribute attribute[1];
                    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                    attribute[0].val.programmaticStreamSerializationAllowed = 1;
                    config.attrs = attribute;
                    config.numAttrs = chained ? 1 : 0;
                    if (cudaLaunchKernelEx(&config, read_spans, spans, static_cast<unsigned*>(sink.ptr)) != cudaSuccess)
                        throw std::runtime_error("read_spans launch failed");
                }
            }) / mats.size();
            best = std::min(best, ms * 1e3);
        }
        return best;
    }

    std::string name(int rows) const {
        char label[128];
        snprintf(label, sizeof label, "%d-bit %dx%d->%d%s", exl2 ? 4 : bits, rows, in, out,
                 exl2 ? " exl2 mix + perm" : perm ? " perm (+gather)" : mixed ? " mixed walk" : "");
        return label;
    }
};

// Quantized products (qt_qmatrix_gemv) at batch 1, 4, 8, 16 and 64 on Llama-2-7B's shapes: µs per product and GB/s
// beside the copy bandwidth (and TFLOP/s above batch 1).
void bench_qmatrix() {
    float copy_gbps = 0;
    CHECK(qt_bench_copy(size_t(1) << 30, 20, &copy_gbps));
    printf("  %-58s %10.1f GB/s (read + write)\n", "device copy, 1 GiB", copy_gbps);
    struct Case { int bits, in, out; bool perm, mixed; };
    const std::vector<Case> cases = {{4, 4096, 4096, false, false},  {4, 4096, 11008, false, false},
                                     {4, 11008, 4096, false, false}, {4, 4096, 32000, false, false},
                                     {4, 4096, 4096, true, false},   {4, 4096, 11008, false, true},
                                     {4, 11008, 4096, false, true},  {3, 4096, 11008, false, false},
                                     {3, 11008, 4096, false, false}, {8, 4096, 11008, false, false},
                                     {8, 11008, 4096, false, false}};
    auto print = [&](const BenchQMatrix& b, int rows) {
        const std::pair<double, double> timed = b.time(rows);
        const double us = timed.first, gbps = timed.second;
        printf("  %-58s %10.2f us  %6.0f GB/s  %3.0f %% of copy", ("qmatrix gemv " + b.name(rows)).c_str(), us, gbps,
               100.0 * gbps / copy_gbps);
        if (rows > 1) printf("  %6.1f TFLOP/s", 2.0 * rows * b.in * b.out / (us * 1e-6) / 1e12);
        if (rows == 1)
            for (bool chained : {false, true}) {
                const double read = b.read_us(chained);
                printf("  | read %s %.2f us, %3.0f %% of copy", chained ? "chained" : "alone", read,
                       100.0 * b.matrix_bytes / (read * 1e-6) / 1e9 / copy_gbps);
            }
        printf("\n");
    };
    for (const Case& c : cases) {
        const BenchQMatrix b(c.bits, c.in, c.out, c.perm, c.mixed);
        for (int rows : {1, 4, 8, 16, 64})
            if (!((c.perm || c.mixed) && rows > 1)) print(b, rows);
    }
    // EXL2 mixes with their perm (mixed widths: the input split) in the shapes of a Llama-2-7B layer's products.
    for (const auto& [in, out] : {std::array<int, 2>{4096, 4096}, {4096, 11008}, {11008, 4096}})
        print(BenchQMatrix(4, in, out, true, false, true), 1);
    // A layer's q/k/v (F16 y, as decoding writes them) and gate/up (EXL2 mixes, one perm each set): one product after
    // another (x gathered once), and all of a set in one qt_qmatrix_gemv_many launch.
    for (const int out : {4096, 11008}) {
        const int parts = out == 4096 ? 3 : 2;
        std::vector<std::unique_ptr<BenchQMatrix>> set;
        for (int p = 0; p < parts; p++) set.push_back(std::make_unique<BenchQMatrix>(4, 4096, out, true, false, true));
        Device x = upload_as(randn(4096), QT_F16), scratch(4096 * 2);
        std::vector<Device> y;
        std::vector<void*> yp;
        for (int p = 0; p < parts; p++) {
            y.emplace_back(size_t(out) * 2);
            yp.push_back(y.back().ptr);
        }
        const size_t copies = set[0]->mats.size();
        for (const bool many : {false, true}) {
            const double ms = time_ms([&] {
                for (size_t k = 0; k < copies; k++) {
                    std::vector<qt_qmatrix> w;
                    for (const auto& b : set) w.push_back(b->mats[k]);
                    if (many)
                        CHECK(qt_qmatrix_gemv_many(parts, yp.data(), QT_F16, 0, x.ptr, w.data(), 1, scratch.ptr,
                                                   scratch.bytes, nullptr));
                    else  // as Backend.linears did: the first gathers x, the others read it gathered
                        for (int p = 0; p < parts; p++) {
                            qt_qmatrix wp = w[p];
                            if (p > 0) wp.perm = nullptr;
                            CHECK(qt_qmatrix_gemv(yp[p], QT_F16, 0, p > 0 ? scratch.ptr : x.ptr, &wp, 1,
                                                  p > 0 ? nullptr : scratch.ptr, p > 0 ? 0 : scratch.bytes, nullptr));
                        }
                }
            }) / copies;
            const double bytes = parts * double(set[0]->matrix_bytes);
            char label[96];
            snprintf(label, sizeof label, "qmatrix gemv exl2 mix + perm %dx 1x4096->%d, %s", parts, out,
                     many ? "one launch" : "one by one");
            printf("  %-58s %10.2f us  %6.0f GB/s  %3.0f %% of copy\n", label, ms * 1e3, bytes / (ms * 1e-3) / 1e9,
                   100.0 * bytes / (ms * 1e-3) / 1e9 / copy_gbps);
        }
    }
}

// qt_decode_attention on Llama-2-7B shapes (MHA, and GQA with 8 kv heads) at a few positions of a 4096-row cache:
// called directly, replayed as a one-call graph, and beside qt_rope x2 + qt_attention doing the same step.
// GB/s counts the K and V rows read.
void bench_decode_attention() {
    struct Shape { int batch, heads, kv_heads, head_dim; };
    const int max_seq = 4096;
    void* stream = nullptr;
    CHECK(qt_stream_create(&stream));
    for (Shape sh : {Shape{1, 32, 32, 128}, Shape{1, 32, 8, 128}, Shape{16, 32, 8, 128}}) {
        const size_t q_elems = size_t(sh.batch) * sh.heads * sh.head_dim, kv_elems = size_t(sh.batch) * sh.kv_heads * sh.head_dim;
        Device kc = upload_as(randn_tiled(kv_elems * max_seq), QT_F16), vc = upload_as(randn_tiled(kv_elems * max_seq), QT_F16);
        Device q = upload_as(randn(q_elems), QT_F16), k = upload_as(randn(kv_elems), QT_F16), v = upload_as(randn(kv_elems), QT_F16);
        Device out(q_elems * 2), inv = Device::from(rope_inv_freq(sh.head_dim, 10000.0)), pos(4);
        size_t scratch_bytes = 0, attn_scratch_bytes = 0;
        CHECK(qt_decode_attention_scratch_bytes(sh.batch, max_seq, sh.heads, sh.kv_heads, sh.head_dim, &scratch_bytes));
        Device scratch(scratch_bytes);
        for (int p : {512, 2048, 4095}) {
            CHECK(qt_memcpy_htod(pos.ptr, &p, 4, stream));
            auto call = [&] {
                CHECK(qt_decode_attention(out.ptr, q.ptr, k.ptr, v.ptr, kc.ptr, vc.ptr, sh.batch, max_seq, sh.heads,
                                          sh.kv_heads, sh.head_dim, static_cast<const int32_t*>(pos.ptr), inv.ptr,
                                          scratch.ptr, scratch_bytes, stream));
            };
            const double direct = time_ms(call, 50, stream);
            void* graph = nullptr;
            CHECK(qt_graph_begin(stream));
            call();
            CHECK(qt_graph_end(stream, &graph));
            const double graphed = time_ms([&] { CHECK(qt_graph_launch(graph, stream)); }, 50, stream);
            CHECK(qt_graph_destroy(graph));
            CHECK(qt_attention_scratch_bytes(QT_F16, sh.batch, 1, p, sh.heads, sh.kv_heads, sh.head_dim, &attn_scratch_bytes));
            Device attn_scratch(attn_scratch_bytes);
            const double before = time_ms([&] {
                CHECK(qt_rope(q.ptr, QT_F16, sh.batch, sh.heads, sh.head_dim, 1, p, inv.ptr, stream));
                CHECK(qt_rope(k.ptr, QT_F16, sh.batch, sh.kv_heads, sh.head_dim, 1, p, inv.ptr, stream));
                CHECK(qt_attention(out.ptr, q.ptr, k.ptr, v.ptr, kc.ptr, vc.ptr, QT_F16, sh.batch, 1, p, max_seq, sh.heads,
                                   sh.kv_heads, sh.head_dim, attn_scratch.ptr, attn_scratch_bytes, stream));
            }, 50, stream);
            const double bytes = 2.0 * 2 * double(p + 1) * kv_elems;
            char label[128];
            snprintf(label, sizeof label, "decode_attention b%d h%d kv%d d%d @%d", sh.batch, sh.heads, sh.kv_heads,
                     sh.head_dim, p);
            printf("  %-44s %7.1f us %7.1f GB/s of cache | graph %6.1f us | rope x2 + qt_attention %6.1f us\n", label,
                   direct * 1e3, bytes / (direct * 1e-3) / 1e9, graphed * 1e3, before * 1e3);
        }
    }
    CHECK(qt_stream_destroy(stream));
}

// qt_awq_clip_search on Llama-2-7B's linear shapes at group 128 (gate/up 4096 -> 11008, down 11008 -> 4096), the
// zero-point grid with two-sided ranges (110 candidates) and symmetric (10), beside the Gram of 512 sampled rows.
// Runs only when named (--bench awqclip).
void bench_awq_clip() {
    const int tokens = 512;
    for (auto [in, out] : {std::array<int, 2>{4096, 11008}, std::array<int, 2>{11008, 4096}}) {
        const int groups = in / 128;
        Device w = Device::from(randn_tiled(size_t(out) * in, 0.02f)), x = Device::from(randn_tiled(size_t(tokens) * in));
        Device gram(size_t(in) * in * 4), range(size_t(out) * groups * 2 * 4);
        const double gram_ms = time_ms([&] {
            CHECK(qt_memset_async(gram.ptr, 0, gram.bytes, nullptr));
            CHECK(qt_gram_accumulate(gram.ptr, x.ptr, tokens, in, nullptr));
        }, 5);
        for (int zero_point : {1, 0}) {
            const double ms = time_ms([&] {
                CHECK(qt_awq_clip_search(static_cast<float*>(range.ptr), w.ptr, gram.ptr, out, in, 128, 4, zero_point,
                                         zero_point, nullptr));
            }, 5);
            char label[128];
            snprintf(label, sizeof label, "awqclip %dx%d g128 %s", in, out, zero_point ? "zero-point two-sided" : "sym");
            printf("  %-58s %10.3f ms  (+ Gram of %d rows %.3f ms)\n", label, ms, tokens, gram_ms);
        }
    }
}

void bench() {
    printf("\nTimings (median of CUDA-event-timed runs after warm-up; random inputs)\n");
    try {
        if (bench_section("copy")) {
            float gbps = 0;
            CHECK(qt_bench_copy(size_t(1) << 30, 20, &gbps));
            printf("  %-58s %10.1f GB/s (read + write)\n", "device copy, 1 GiB", gbps);
        }
        if (bench_section("attention")) bench_attention();
        if (bench_section("linear")) bench_linear();
        if (bench_section("layer")) bench_layer();
        if (bench_section("decode")) bench_decode_attention();
        if (bench_section("qmatrix")) bench_qmatrix();
        if (!bench_only.empty() && bench_section("awqclip")) bench_awq_clip();
    } catch (const std::exception& e) {
        printf("  benchmark failed: %s\n", e.what());
        failures++;
    }
}

}  // namespace

int main(int argc, char** argv) {
    uint64_t seed = std::random_device{}();
    const char* lib_dirs = getenv("QTOOL_CUDA_LIB_DIR");
    bool benchmarks = true, tests = true;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], nullptr, 10);
        else if (!strcmp(argv[i], "--cuda-lib-dir") && i + 1 < argc) lib_dirs = argv[++i];
        else if (!strcmp(argv[i], "--no-bench")) benchmarks = false;
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--bench") && i + 1 < argc) bench_only = argv[++i];
        else if (!strcmp(argv[i], "--bench-only")) tests = false;
        else {
            fprintf(stderr, "usage: %s [--seed N] [--cuda-lib-dir DIR[:DIR...]] [--no-bench] [--filter NAME] [--bench NAME] "
                            "[--bench-only]\n", argv[0]);
            return 2;
        }
    }
    rng.seed(seed);

    int status = qt_init(lib_dirs);
    if (status != QT_OK) {
        printf("test_kernels: qt_init failed: %s: %s\n", qt_status_string(status), qt_last_error());
        return 2;
    }
    qt_device_info info;
    if (qt_device_info_get(0, &info) != QT_OK) {
        printf("test_kernels: %s\n", qt_last_error());
        return 2;
    }
    printf("device: %s, %d SMs, cc %d.%d, %.1f GiB (%.1f free), memory %d-bit at %d MHz\n", info.name,
           info.multiprocessor_count, info.compute_capability_major, info.compute_capability_minor,
           info.total_memory_bytes / 1073741824.0, info.free_memory_bytes / 1073741824.0, info.memory_bus_width_bits,
           info.memory_clock_khz / 1000);
    const char* cusolver = qt_loaded_library(QT_LIB_CUSOLVER);
    printf("cuBLAS: %s\ncuSOLVER: %s\nseed: %llu\n\n", qt_loaded_library(QT_LIB_CUBLAS),
           cusolver ? cusolver : "(not loaded)", static_cast<unsigned long long>(seed));

    if (tests) {
        test_cast();
        test_embedding();
        test_rmsnorm();
        test_rope();
        test_attention(2, 8, 2, 64, 37);               // the GQA case of the spec
        test_attention(2, 8, 2, 64, 37, false);        // its decode step without scratch (unsplit fallback)
        test_attention(1, 4, 4, 128, 70);
        test_attention(1, 8, 4, 8, 19);                // stories260K's shape (head_dim 8)
        test_attention(2, 6, 2, 96, 50);
        test_attention(1, 4, 1, 256, 40);
        test_attention(1, 9, 3, 64, 150);              // SmolLM2's heads
        test_attention(1, 32, 8, 128, 600);            // long cache: the decode step splits its keys
        // The 16-bit tensor-core kernel: the same shapes (head_dim % 8 == 0, <= 128), more row blocks, BF16.
        for (int dtype : {QT_F16, QT_BF16}) {
            test_attention(2, 8, 2, 64, 37, true, dtype);
            test_attention(2, 8, 2, 64, 37, false, dtype);
            test_attention(1, 4, 4, 128, 70, true, dtype);
            test_attention(1, 8, 4, 8, 19, true, dtype);
            test_attention(2, 6, 2, 96, 50, true, dtype);
            test_attention(1, 9, 3, 64, 150, true, dtype);
            test_attention(1, 32, 8, 128, 600, true, dtype);
            test_attention(2, 4, 4, 128, 333, true, dtype);  // MHA, several 64-row blocks, a partial last tile
            test_attention(3, 2, 1, 32, 130, true, dtype);   // group 2, head_dim 32 (padded to 64)
        }
        test_silu_add();
        test_linear(QT_F32, 37, 1024, 768, true, 1e-5);
        test_linear(QT_F32, 1, 576, 1536, false, 1e-5);
        test_linear(QT_F16, 37, 1024, 768, true, 1e-2);
        test_linear(QT_BF16, 37, 1024, 768, true, 1e-2);
        test_linear(QT_BF16, 1, 576, 1536, false, 1e-2);
        test_linear(QT_F32, 37, 1024, 768, true, 1e-5, QT_F32, QT_F32, true);
        test_linear(QT_F16, 37, 1024, 768, true, 1e-3, QT_F16, QT_F16);
        test_linear(QT_F16, 37, 1024, 768, false, 1e-5, QT_F16, QT_F32, true);
        test_linear(QT_F16, 5, 256, 320, true, 1e-2, QT_F32, QT_F16);
        test_linear(QT_BF16, 37, 1024, 768, true, 1e-2, QT_BF16, QT_BF16, true);
        test_linear(QT_BF16, 1, 576, 1536, false, 1e-5, QT_BF16, QT_F32, true);
        test_decode_attention({1, 9, 3, 64, 2048}, {0, 1, 255, 256, 1000, 2047});   // SmolLM2
        test_decode_attention({1, 32, 32, 128, 1100}, {0, 1, 255, 256, 1000, 1099}); // Llama-2-7B
        test_decode_attention({2, 32, 8, 128, 1100}, {0, 1, 255, 256, 1000, 1099});  // GQA 32/8
        test_decode_attention({1, 4, 1, 256, 300}, {0, 1, 255, 256, 299});           // head_dim 256, one kv head
        test_decode_attention({1, 8, 4, 8, 300}, {0, 1, 255, 299});                  // head_dim 8 (stories260K)
        test_decode_attention({2, 6, 2, 96, 300}, {0, 1, 256, 299});                 // 12 of 16 lanes per row
        test_decode_attention({1, 24, 2, 64, 600}, {0, 256, 599});                   // 12 query heads a kv head: 2 blocks
        test_decode_attention({1, 16, 1, 64, 600}, {1, 599});                        // MQA, 16 heads: 2 blocks of 8
        test_decode_attention({3, 4, 4, 32, 520}, {0, 255, 519});
        test_decode_attention({1, 4, 4, 64, 40000}, {0, 39999});                     // more chunks than blocks: loops
        test_graph();
        test_cross_entropy();
        test_cholesky(200);
        test_errors();
        test_qmatrix("mixed 8..2b 4096->4096 exl2", 4096, 4096, {8, 6, 5, 4, 3, 2}, {32, 64, 128}, false, true);
        test_qmatrix("mixed 8..2b 576->200 zeros", 576, 200, {8, 6, 5, 4, 3, 2}, {32, 64, 128}, true, false);
        test_qmatrix("mixed 6..2b 608->200 exl2", 608, 200, {6, 5, 4, 3, 2}, {32, 64}, false, true);  // 19 units: a lone last unit
        test_qmatrix("4b g128 11008->4096 act-order", 11008, 4096, {4}, {128}, true, true);
        test_qmatrix("3b g64 4096->4096", 4096, 4096, {3}, {64}, true, false);
        test_qmatrix("8b g128 4096->1024", 4096, 1024, {8}, {128}, true, false);
        test_qmatrix("2b g32 1024->256 exl2", 1024, 256, {2}, {32}, false, true);
        test_qmatrix("5b g64 1024->264", 1024, 264, {5}, {64}, true, false);
        test_qmatrix("6b g128 2048->256 exl2", 2048, 256, {6}, {128}, false, false);
        // Widths averaging 4 bits, groups of 32 (a group per unit), 2 splits.
        test_qmatrix("mixed 4,4,6,2b 4096->1024", 4096, 1024, {4, 4, 6, 2}, {32}, true, false);
        test_qmatrix("mixed 8..2b 16384->64 zeros", 16384, 64, {8, 6, 5, 4, 3, 2}, {128}, true, false);  // 4 splits of pairs
        test_qmatrix_many();
        test_qmatrix_errors();
        for (int zero_point : {1, 0}) {
            for (int two_sided : {1, 0}) {
                test_awq_clip(67, 96, 32, 4, zero_point, two_sided);
                test_awq_clip(67, 200, 64, 4, zero_point, two_sided);   // a ragged last group of 8
                test_awq_clip(131, 576, 128, 3, zero_point, two_sided);  // three row chunks, the last partial
            }
        }
        test_awq_clip_errors();

        printf("%-58s %12s %10s  %s\n", "check", "error", "limit", "result");
        for (const Row& row : rows)
            printf("%-58s %12.3e %10.1e  %s%s%s\n", row.name.c_str(), row.error, row.limit, row.pass() ? "PASS" : "FAIL",
                   row.note.empty() ? "" : "  ", row.note.c_str());
        printf("%zu checks, %d failed\n", rows.size(), failures);

    }

    if (benchmarks) bench();
    return failures == 0 ? 0 : 1;
}
