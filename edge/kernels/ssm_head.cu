// Fused SSM semantic head + output-level prior mapping + per-track smoothing.
//
// One thread block per face (docs/kernel.md explains the layout). The math is
// docs/head.md; edge/head/reference.py is the NumPy reference it is tested
// against. The source is header-free (no cuda_fp16.h, no size_t) so nvcc
// (pycuda, offline builds) and NVRTC (CuPy RawModule) compile the same text.
//
// Packed parameters (float32, built by edge/kernels/layout.py:pack_params), R = 2E + 2A:
//   rows[R][D] = [W_E; T_E'; W_A; T_A'] | b_E[E] | b_A[A] | loglik[E][A] | prior_bias[E]
//   | expect[A][E] | au_threshold[A]
// Smoothing state per slot: values[max_tracks][depth][E + A] (depth = window for
// mode 2, else 1) and counters[max_tracks][2] = (fill, next ring index).
// Dynamic shared memory: (2D + R + 2 + 4E + 3A) floats; blockDim.x a multiple of 32, <= MAX_THREADS.

#define FULL_MASK 0xffffffffu
#define MAX_THREADS 256  // launch bound; edge/kernels/launcher.py keeps blockDim.x <= this

enum SmoothMode { SMOOTH_NONE = 0, SMOOTH_EMA = 1, SMOOTH_WINDOW = 2 };

__device__ __forceinline__ float load_feature(const float* p, int i) { return p[i]; }

// FP16 as raw bits: keeps the source free of cuda_fp16.h for NVRTC.
__device__ __forceinline__ float load_feature(const unsigned short* p, int i) {
    float out;
    asm("cvt.f32.f16 %0, %1;" : "=f"(out) : "h"(p[i]));
    return out;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// NaN and +-inf fail the comparison; written out so no math header or fast-math flag can change it.
__device__ __forceinline__ bool is_finite(float x) { return fabsf(x) <= 3.402823466e38f; }

__device__ __forceinline__ float stable_sigmoid(float z) {
    const float e = expf(-fabsf(z));
    return z >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
}

// softmax(src[0:n]) -> dst, by one whole warp; lane i owns elements i, i + 32, ...
__device__ void warp_softmax(const float* src, float* dst, int n, int lane) {
    float m = __int_as_float(0xff800000);  // -inf
    for (int i = lane; i < n; i += 32) m = fmaxf(m, src[i]);
    m = warp_max(m);
    float s = 0.f;
    for (int i = lane; i < n; i += 32) {
        const float e = expf(src[i] - m);
        dst[i] = e;
        s += e;
    }
    s = warp_sum(s);
    for (int i = lane; i < n; i += 32) dst[i] = dst[i] / s;
}

// argmax(v[0:n]) by one warp, lowest index on ties (as numpy.argmax).
__device__ int warp_argmax(const float* v, int n, int lane) {
    float best = __int_as_float(0xff800000);
    int idx = n;
    for (int i = lane; i < n; i += 32) {
        if (v[i] > best || idx == n) {
            best = v[i];
            idx = i;
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float ob = __shfl_xor_sync(FULL_MASK, best, offset);
        const int oi = __shfl_xor_sync(FULL_MASK, idx, offset);
        if (oi < n && (idx == n || ob > best || (ob == best && oi < idx))) {
            best = ob;
            idx = oi;
        }
    }
    return idx;
}

template <typename T>
__device__ void ssm_head(const T* __restrict__ f, const T* __restrict__ g, const float* __restrict__ params,
                         const int* __restrict__ slots, const unsigned char* __restrict__ fresh,
                         float* __restrict__ state, int* __restrict__ counters, float* __restrict__ out_fe,
                         float* __restrict__ out_au, unsigned char* __restrict__ out_active,
                         int* __restrict__ out_top, int D, int E, int A, int max_tracks, int mode, int window,
                         float alpha, float scale, float mix_fe, float mix_au) {
    extern __shared__ float smem[];
    const int face = blockIdx.x;
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int nwarps = blockDim.x >> 5;
    const int R = 2 * E + 2 * A;
    const int C = E + A;

    float* xf = smem;
    float* xg = xf + D;
    float* dots = xg + D;  // R GEMV rows, then |f|^2, |g|^2
    float* z_fe = dots + R + 2;
    float* p_fe0 = z_fe + E;
    float* z_fe2 = p_fe0 + E;
    float* p_fe = z_fe2 + E;
    float* z_au = p_fe + E;
    float* p_au0 = z_au + A;
    float* p_au = p_au0 + A;

    const float* b_fe = params + (long long)R * D;
    const float* b_au = b_fe + E;
    const float* loglik = b_au + A;
    const float* prior_bias = loglik + E * A;
    const float* expect = prior_bias + E;
    const float* threshold = expect + A * E;

    // 1. Stage both feature vectors in shared memory (FP16 widened to FP32 here).
    const T* fr = f + (long long)face * D;
    const T* gr = g + (long long)face * D;
    for (int i = tid; i < D; i += blockDim.x) {
        xf[i] = load_feature(fr, i);
        xg[i] = load_feature(gr, i);
    }
    __syncthreads();

    // 2. One warp per GEMV row (coalesced weight reads, shuffle reduction), plus the two norms.
    for (int r = warp; r < R + 2; r += nwarps) {
        const float* x = (r < 2 * E || r == R) ? xf : xg;
        float acc = 0.f;
        if (r < R) {
            const float* w = params + (long long)r * D;
            for (int i = lane; i < D; i += 32) acc = fmaf(__ldg(w + i), x[i], acc);
        } else {
            for (int i = lane; i < D; i += 32) acc = fmaf(x[i], x[i], acc);
        }
        acc = warp_sum(acc);
        if (lane == 0) dots[r] = acc;
    }
    __syncthreads();

    // 3. Logits: linear head + scaled cosine similarity to the transferred prototypes.
    const float n_f = fmaxf(sqrtf(dots[R]), 1e-6f);
    const float n_g = fmaxf(sqrtf(dots[R + 1]), 1e-6f);
    for (int e = tid; e < E; e += blockDim.x) z_fe[e] = dots[e] + b_fe[e] + scale * (dots[E + e] / n_f);
    for (int a = tid; a < A; a += blockDim.x) {
        const float z = dots[2 * E + a] + b_au[a] + scale * (dots[2 * E + A + a] / n_g);
        z_au[a] = z;
        p_au0[a] = stable_sigmoid(z);
    }
    __syncthreads();
    if (warp == 0) warp_softmax(z_fe, p_fe0, E, lane);
    __syncthreads();

    // 4. Output-level prior mapping, both directions from the unrefined outputs.
    for (int e = tid; e < E; e += blockDim.x) {
        float acc = 0.f;
        for (int a = 0; a < A; ++a) acc = fmaf(loglik[e * A + a], p_au0[a], acc);
        z_fe2[e] = z_fe[e] + mix_fe * (acc + prior_bias[e]) / (float)A;
    }
    for (int a = tid; a < A; a += blockDim.x) {
        float acc = 0.f;
        for (int e = 0; e < E; ++e) acc = fmaf(expect[a * E + e], p_fe0[e], acc);
        p_au[a] = (1.f - mix_au) * p_au0[a] + mix_au * acc;
    }
    __syncthreads();
    if (warp == 0) warp_softmax(z_fe2, p_fe, E, lane);
    __syncthreads();

    // 5. Per-track smoothing; state in device memory indexed by slot (slot < 0: no track).
    //    A row that is not finite never enters the state (docs/head.md): it is passed through, the host
    //    drops that face for this frame, and the track continues from its last good frame. A fresh slot
    //    still restarts, so the next frame of a new track never blends with the slot's previous owner.
    const int slot = slots[face];
    if (mode != SMOOTH_NONE && slot >= 0 && slot < max_tracks) {  // uniform per block
        int* ctr = counters + 2 * slot;
        const int depth = mode == SMOOTH_WINDOW ? window : 1;
        float* values = state + (long long)slot * depth * C;
        const bool restart = fresh[face] != 0;
        const int fill = restart ? 0 : ctr[0];
        const int head = restart ? 0 : ctr[1];
        const int n = min(fill + 1, depth);
        bool finite = true;  // every thread scans the C values in shared memory: uniform, no reduction
        for (int c = 0; c < C; ++c) finite = finite && is_finite(c < E ? p_fe[c] : p_au[c - E]);
        if (finite) {
            for (int c = tid; c < C; c += blockDim.x) {
                float* pc = c < E ? p_fe + c : p_au + (c - E);
                const float p = *pc;
                float s;
                if (mode == SMOOTH_EMA) {
                    s = fill == 0 ? p : alpha * p + (1.f - alpha) * values[c];
                    values[c] = s;
                } else {
                    values[(long long)head * C + c] = p;
                    float sum = 0.f;
                    for (int k = 0; k < n; ++k) sum += values[(long long)k * C + c];
                    s = sum / (float)n;
                }
                *pc = s;
            }
        }
        __syncthreads();  // every thread has read the counters before thread 0 moves them
        if (tid == 0 && finite) {
            ctr[0] = mode == SMOOTH_EMA ? 1 : n;
            ctr[1] = mode == SMOOTH_EMA ? 0 : (head + 1) % depth;
        } else if (tid == 0 && restart) {
            ctr[0] = 0;
            ctr[1] = 0;
        }
    }
    __syncthreads();

    // 6. Outputs: smoothed probabilities, active-AU flags, top expression.
    for (int e = tid; e < E; e += blockDim.x) out_fe[(long long)face * E + e] = p_fe[e];
    for (int a = tid; a < A; a += blockDim.x) {
        out_au[(long long)face * A + a] = p_au[a];
        out_active[(long long)face * A + a] = p_au[a] >= threshold[a] ? 1 : 0;
    }
    if (warp == 0) {
        const int top = warp_argmax(p_fe, E, lane);
        if (lane == 0) out_top[face] = top;
    }
}

#define SSM_HEAD_ENTRY(NAME, T)                                                                                    \
    extern "C" __global__ void __launch_bounds__(MAX_THREADS)                                                      \
        NAME(const T* f, const T* g, const float* params, const int* slots, const unsigned char* fresh,            \
             float* state, int* counters, float* out_fe, float* out_au, unsigned char* out_active, int* out_top,   \
             int D, int E, int A, int max_tracks, int mode, int window, float alpha, float scale, float mix_fe,    \
             float mix_au) {                                                                                       \
        ssm_head<T>(f, g, params, slots, fresh, state, counters, out_fe, out_au, out_active, out_top, D, E, A,     \
                    max_tracks, mode, window, alpha, scale, mix_fe, mix_au);                                       \
    }

SSM_HEAD_ENTRY(ssm_head_f32, float)
SSM_HEAD_ENTRY(ssm_head_f16, unsigned short)
