// Winograd F(2x2,3x3) tile transforms compiled with the AVX512 flags: the loops over
// tiles in winograd_kernels.h vectorise; same operations in the same order as the
// portable copy (csrc/conv_winograd.cpp), so the results are bitwise identical.
#include "../conv.h"
#include "winograd_kernels.h"

namespace pyconv {
namespace wino_avx512 {

PYCONV_WINO_ROW_KERNELS

}  // namespace wino_avx512
}  // namespace pyconv

// ---- AVX-512 float32 panel kernels: 16 tiles (or 16 output channels) per vector, the
// patches gathered with masks (masked-off lanes read nothing and give zeros), the same
// additions in the same order as winograd_kernels.h, so the results equal the portable
// ones bit for bit.
#include <immintrin.h>

#include <cstdint>

#include "transpose_avx512.h"

namespace pyconv {
namespace wino_avx512 {
namespace {

// B^T d B for 16 lanes at once, in the order of winograd_kernels.h: bt_row takes row r
// of d (columns d0..d3) to a[r]; bt_cols_store combines the rows and stores position
// 4*q + c at o[(4*q + c)*ps].
inline void bt_row(__m512 d0, __m512 d1, __m512 d2, __m512 d3, __m512* a) {
  a[0] = _mm512_sub_ps(d0, d2);
  a[1] = _mm512_add_ps(d1, d2);
  a[2] = _mm512_sub_ps(d2, d1);
  a[3] = _mm512_sub_ps(d1, d3);
}

inline void bt_cols_store(const __m512 (&a)[4][4], float* o, i64 ps) {
  for (int c = 0; c < 4; ++c) {
    _mm512_storeu_ps(o + (0 + c) * ps, _mm512_sub_ps(a[0][c], a[2][c]));
    _mm512_storeu_ps(o + (4 + c) * ps, _mm512_add_ps(a[1][c], a[2][c]));
    _mm512_storeu_ps(o + (8 + c) * ps, _mm512_sub_ps(a[2][c], a[1][c]));
    _mm512_storeu_ps(o + (12 + c) * ps, _mm512_sub_ps(a[1][c], a[3][c]));
  }
}

// A^T M A + bias for 16 tiles: m[pos*ps + l] is M(pos, tile l); y = outputs (0,0), (0,1),
// (1,0), (1,1), in the order of winograd_kernels.h.
inline void at_m_a(const float* m, i64 ps, float bias, __m512* y) {
  __m512 s0[4], s1[4];
  for (int r = 0; r < 4; ++r) {
    const __m512 m0 = _mm512_loadu_ps(m + (4 * r + 0) * ps);
    const __m512 m1 = _mm512_loadu_ps(m + (4 * r + 1) * ps);
    const __m512 m2 = _mm512_loadu_ps(m + (4 * r + 2) * ps);
    const __m512 m3 = _mm512_loadu_ps(m + (4 * r + 3) * ps);
    s0[r] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
    s1[r] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
  }
  const __m512 b = _mm512_set1_ps(bias);
  y[0] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0[0], s0[1]), s0[2]), b);
  y[1] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s1[0], s1[1]), s1[2]), b);
  y[2] = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s0[1], s0[2]), s0[3]), b);
  y[3] = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s1[1], s1[2]), s1[3]), b);
}

}  // namespace

// V for 16 tiles and channels c0 .. c1-1: element (r, c) of tile l of channel ci is
// x[ci*plane + off[l] + r*row + c] where masks[4r + c] has bit l set (else 0). Writes
// position pos of channel ci to out[pos*ps + ci*ccs + l], l = 0..15.
void input_panels_f32(const float* x, i64 plane, i64 row, i64 c0, i64 c1, const int* off,
                      const unsigned short* masks, float* out, i64 ccs, i64 ps) {
  const __m512i vo = _mm512_loadu_si512(off);
  __m512i idx[16];
  __mmask16 mk[16];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) {
      idx[4 * r + c] = _mm512_add_epi32(vo, _mm512_set1_epi32(static_cast<int>(r * row + c)));
      mk[4 * r + c] = masks[4 * r + c];
    }
  const __m512 z = _mm512_setzero_ps();
  // The panel's patches span at most 4 rows of 2*16+2 columns from the first tile's
  // corner (when its 16 tiles sit in one tile row): those lines of channel ci + kAhead
  // are prefetched (gathers get no help from the hardware prefetchers).
  constexpr i64 kAhead = 2;
  const int lo = off[0];
  const bool one_row = off[15] - off[0] == 30;
  for (i64 ci = c0; ci < c1; ++ci) {
    const float* xc = x + ci * plane;
    if (one_row && ci + kAhead < c1) {
      const char* pf = reinterpret_cast<const char*>(xc + kAhead * plane + lo);
      for (int r = 0; r < 4; ++r)
        for (int b = 0; b <= 128; b += 64) _mm_prefetch(pf + r * row * 4 + b, _MM_HINT_T0);
    }
    __m512 a[4][4];
    for (int r = 0; r < 4; ++r) {
      const __m512 d0 = _mm512_mask_i32gather_ps(z, mk[4 * r + 0], idx[4 * r + 0], xc, 4);
      const __m512 d1 = _mm512_mask_i32gather_ps(z, mk[4 * r + 1], idx[4 * r + 1], xc, 4);
      const __m512 d2 = _mm512_mask_i32gather_ps(z, mk[4 * r + 2], idx[4 * r + 2], xc, 4);
      const __m512 d3 = _mm512_mask_i32gather_ps(z, mk[4 * r + 3], idx[4 * r + 3], xc, 4);
      bt_row(d0, d1, d2, d3, a[r]);
    }
    float* o = out + ci * ccs;
    bt_cols_store(a, o, ps);
  }
}

// V for 16 tiles forming nruns (a few) runs of adjacent tiles of one tile row each, channels
// c0 .. c1-1: run s's lane l reads its patch row r, columns 0..3 at x[ci*plane + base[s] +
// r*row + 2l + c] (base[s] already moved back by the run's first lane), element k of
// the 32 at + 2l + (0|1) (+ 2l + (2|3)) read where bit k of ma[4s + r] (ma2[4s + r]) is
// set, else 0. Each row is four masked loads per run and four permutes splitting even
// and odd columns instead of four gathers; same values and writes as input_panels_f32.
void input_panel_runs_f32(const float* x, i64 plane, i64 row, i64 c0, i64 c1, int nruns, const i64* base,
                          const unsigned* ma, const unsigned* ma2, float* out, i64 ccs, i64 ps) {
  const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i od = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  const __m512 z = _mm512_setzero_ps();
  constexpr i64 kAhead = 2;
  for (i64 ci = c0; ci < c1; ++ci) {
    const std::uintptr_t xc = reinterpret_cast<std::uintptr_t>(x) +
                              static_cast<std::uintptr_t>(ci * plane * static_cast<i64>(sizeof(float)));
    if (ci + kAhead < c1)
      for (int s = 0; s < nruns; ++s)
        for (int r = 0; r < 4; ++r)
          if (ma2[4 * s + r]) {
            const char* pf = reinterpret_cast<const char*>(
                xc + static_cast<std::uintptr_t>((kAhead * plane + base[s] + r * row) * static_cast<i64>(sizeof(float))));
            _mm_prefetch(pf + 4 * (__builtin_ctz(ma[4 * s + r] | ma2[4 * s + r])), _MM_HINT_T0);
            _mm_prefetch(pf + 4 * (31 - __builtin_clz(ma2[4 * s + r])) + 8, _MM_HINT_T0);
          }
    __m512 a[4][4];
    for (int r = 0; r < 4; ++r) {
      __m512 A = z, B = z, A2 = z, B2 = z;
      for (int s = 0; s < nruns; ++s) {
        const unsigned m1 = ma[4 * s + r], m2 = ma2[4 * s + r];
        if ((m1 | m2) == 0) continue;
        const std::uintptr_t q = xc + static_cast<std::uintptr_t>((base[s] + r * row) * static_cast<i64>(sizeof(float)));
        A = _mm512_mask_loadu_ps(A, static_cast<__mmask16>(m1 & 0xFFFFu), reinterpret_cast<const float*>(q));
        B = _mm512_mask_loadu_ps(B, static_cast<__mmask16>(m1 >> 16), reinterpret_cast<const float*>(q + 64));
        A2 = _mm512_mask_loadu_ps(A2, static_cast<__mmask16>(m2 & 0xFFFFu), reinterpret_cast<const float*>(q + 8));
        B2 = _mm512_mask_loadu_ps(B2, static_cast<__mmask16>(m2 >> 16), reinterpret_cast<const float*>(q + 72));
      }
      const __m512 d0 = _mm512_permutex2var_ps(A, ev, B), d1 = _mm512_permutex2var_ps(A, od, B);
      const __m512 d2 = _mm512_permutex2var_ps(A2, ev, B2), d3 = _mm512_permutex2var_ps(A2, od, B2);
      bt_row(d0, d1, d2, d3, a[r]);
    }
    float* o = out + ci * ccs;
    bt_cols_store(a, o, ps);
  }
}

// Outputs of 16 tiles of one channel: m[pos*ps + l] is M(pos, tile l); output (a, b) of
// tile l goes to y[yoff[l] + a*row + b] where ymask[2a + b] has bit l set.
void output_panel_f32(const float* m, i64 ps, const int* yoff, const unsigned short* ymask, i64 row, float bias,
                      float* y) {
  __m512 yv[4];
  at_m_a(m, ps, bias, yv);
  const __m512 y00 = yv[0], y01 = yv[1], y10 = yv[2], y11 = yv[3];
  const __m512i vo = _mm512_loadu_si512(yoff);
  const __m512i one = _mm512_set1_epi32(1), down = _mm512_set1_epi32(static_cast<int>(row));
  _mm512_mask_i32scatter_ps(y, ymask[0], vo, y00, 4);
  _mm512_mask_i32scatter_ps(y, ymask[1], _mm512_add_epi32(vo, one), y01, 4);
  _mm512_mask_i32scatter_ps(y, ymask[2], _mm512_add_epi32(vo, down), y10, 4);
  _mm512_mask_i32scatter_ps(y, ymask[3], _mm512_add_epi32(_mm512_add_epi32(vo, down), one), y11, 4);
}

// Outputs of 16 tiles of one channel whose tiles form nseg (a few) runs of adjacent tiles
// of one tile row each: run s is lanes l0[s] .. and its first tile's top-left output is
// y[off[s]]; bit 2l + b of top[s] (bot[s]) says that output (0, b) ((1, b)) of lane l
// exists. The two output rows of the 16 tiles are interleaved in registers and written
// with masked stores (no scatter); same values as output_panel_f32.
void output_panel_runs_f32(const float* m, i64 ps, float bias, float* y, i64 row, int nseg, const i64* off,
                           const int* l0, const unsigned* top, const unsigned* bot) {
  __m512 yv[4];
  at_m_a(m, ps, bias, yv);
  const __m512 y00 = yv[0], y01 = yv[1], y10 = yv[2], y11 = yv[3];
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  const __m512 t0 = _mm512_permutex2var_ps(y00, lo, y01), t1 = _mm512_permutex2var_ps(y00, hi, y01);
  const __m512 b0 = _mm512_permutex2var_ps(y10, lo, y11), b1 = _mm512_permutex2var_ps(y10, hi, y11);
  for (int s = 0; s < nseg; ++s) {
    // element e of the interleaved row (lane e / 2) lands at y[off[s] + e - 2*l0[s]]; the
    // masked-off elements are never touched, wherever their addresses would fall
    const std::uintptr_t d = reinterpret_cast<std::uintptr_t>(y) +
                             static_cast<std::uintptr_t>((off[s] - 2 * l0[s]) * static_cast<i64>(sizeof(float)));
    float* dt = reinterpret_cast<float*>(d);
    _mm512_mask_storeu_ps(dt, static_cast<__mmask16>(top[s] & 0xFFFFu), t0);
    _mm512_mask_storeu_ps(reinterpret_cast<float*>(d + 64), static_cast<__mmask16>(top[s] >> 16), t1);
    if (bot[s]) {
      const std::uintptr_t e = d + static_cast<std::uintptr_t>(row * static_cast<i64>(sizeof(float)));
      _mm512_mask_storeu_ps(reinterpret_cast<float*>(e), static_cast<__mmask16>(bot[s] & 0xFFFFu), b0);
      _mm512_mask_storeu_ps(reinterpret_cast<float*>(e + 64), static_cast<__mmask16>(bot[s] >> 16), b1);
    }
  }
}

// U = G w G^T for one panel of 16 output channels and every input channel ci < cg: the
// 3x3 kernel of lane l < m (lanes past m give zeros) and channel ci is w + l*rs + ci*cs,
// taps in order (flip: reversed, the grad-input problem's rotated kernel); position pos
// of channel ci to out[pos*ps + ci*16 + l]. Multiplications by 1/2 are exact, so any
// contraction into FMAs gives the portable result. stream: non-temporal stores.
void weights_panel_f32(const float* w, i64 rs, i64 cs, bool flip, int m, i64 cg, float* out, i64 ps, bool stream) {
  const __mmask16 mk = static_cast<__mmask16>(m >= 16 ? 0xFFFF : ((1u << m) - 1));
  const __m512i base = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(static_cast<int>(rs)));
  const __m512 h = _mm512_set1_ps(0.5f), z = _mm512_setzero_ps();
  for (i64 ci = 0; ci < cg; ++ci) {
    const float* k = w + ci * cs;
    // the 16 kernels kAhead channels ahead (gathers get no hardware prefetch); a channel's
    // 9 taps take about 100 cycles, so 8 channels cover a memory latency (2 did not: c512
    // weights, 9.4 MB, transformed about 10% faster)
    constexpr i64 kAhead = 8;
    if (ci + kAhead < cg) {
      const char* pf = reinterpret_cast<const char*>(k + kAhead * cs);
      for (int l = 0; l < m; ++l) {
        _mm_prefetch(pf + l * rs * 4, _MM_HINT_T0);
        _mm_prefetch(pf + l * rs * 4 + 35, _MM_HINT_T0);
      }
    }
    __m512 g[9];
    for (int q = 0; q < 9; ++q) g[q] = _mm512_mask_i32gather_ps(z, mk, base, k + (flip ? 8 - q : q), 4);
    __m512 t[4][3];
    for (int c = 0; c < 3; ++c) {
      t[0][c] = g[c];
      t[1][c] = _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(g[c], g[3 + c]), g[6 + c]), h);
      t[2][c] = _mm512_mul_ps(_mm512_add_ps(_mm512_sub_ps(g[c], g[3 + c]), g[6 + c]), h);
      t[3][c] = g[6 + c];
    }
    float* o = out + ci * 16;
    __m512 u[16];
    for (int r = 0; r < 4; ++r) {
      u[4 * r + 0] = t[r][0];
      u[4 * r + 1] = _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(t[r][0], t[r][1]), t[r][2]), h);
      u[4 * r + 2] = _mm512_mul_ps(_mm512_add_ps(_mm512_sub_ps(t[r][0], t[r][1]), t[r][2]), h);
      u[4 * r + 3] = t[r][2];
    }
    if (stream)  // out and ps 64-byte aligned (the caller checks)
      for (int q = 0; q < 16; ++q) _mm512_stream_ps(o + q * ps, u[q]);
    else
      for (int q = 0; q < 16; ++q) _mm512_storeu_ps(o + q * ps, u[q]);
  }
  if (stream) _mm_sfence();  // the streamed stores are visible before the GEMMs read them
}

// For each of the 16 positions a 16 x 16 block in[pos*in_ps + j*16 + l] (channel j, tile
// l) to out[pos*out_ps + l*16 + j] for tiles l < nt: tile-lane transforms turned into
// channel-lane panels (grad weight's B panels). Data movement only.
void transpose_panels_f32(const float* in, i64 in_ps, i64 nt, float* out, i64 out_ps) {
  for (int pos = 0; pos < 16; ++pos) {
    const float* s = in + pos * in_ps;
    __m512 r[16];
    for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_ps(s + j * 16);
    avx512_util::transpose16(r);
    float* o = out + pos * out_ps;
    for (i64 l = 0; l < nt; ++l) _mm512_storeu_ps(o + l * 16, r[l]);
  }
}

// Y' = A dY A^T for 16 tiles (lanes) of channels 0 .. nch-1 (plane apart), the tiles in
// nruns runs of one tile row each: lane l of run s reads elements 2l and 2l + 1 of rows
// dy + base[s] and dy + base[s] + row where bits 2l, 2l + 1 of m[2s] (m[2s + 1]) are set
// (else 0). Position pos of channel c goes to out[c*ccs + pos*ps + l]. The same
// operations in the same order as grad_output_channels_f32.
void grad_output_panel_runs_f32(const float* dy, i64 plane, i64 row, i64 nch, int nruns, const i64* base,
                                const unsigned* m, float* out, i64 ccs, i64 ps) {
  const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i od = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  const __m512 z = _mm512_setzero_ps(), sign = _mm512_set1_ps(-0.0f);
  for (i64 c = 0; c < nch; ++c) {
    const std::uintptr_t dc = reinterpret_cast<std::uintptr_t>(dy) +
                              static_cast<std::uintptr_t>(c * plane * static_cast<i64>(sizeof(float)));
    __m512 A[2] = {z, z}, B[2] = {z, z};
    for (int s = 0; s < nruns; ++s)
      for (int a = 0; a < 2; ++a) {
        const unsigned mm = m[2 * s + a];
        if (mm == 0) continue;
        const std::uintptr_t q =
            dc + static_cast<std::uintptr_t>((base[s] + a * row) * static_cast<i64>(sizeof(float)));
        A[a] = _mm512_mask_loadu_ps(A[a], static_cast<__mmask16>(mm & 0xFFFFu), reinterpret_cast<const float*>(q));
        B[a] = _mm512_mask_loadu_ps(B[a], static_cast<__mmask16>(mm >> 16), reinterpret_cast<const float*>(q + 64));
      }
    const __m512 d00 = _mm512_permutex2var_ps(A[0], ev, B[0]), d01 = _mm512_permutex2var_ps(A[0], od, B[0]);
    const __m512 d10 = _mm512_permutex2var_ps(A[1], ev, B[1]), d11 = _mm512_permutex2var_ps(A[1], od, B[1]);
    const __m512 z0[4] = {d00, _mm512_add_ps(d00, d01), _mm512_sub_ps(d00, d01), _mm512_xor_ps(d01, sign)};
    const __m512 z1[4] = {d10, _mm512_add_ps(d10, d11), _mm512_sub_ps(d10, d11), _mm512_xor_ps(d11, sign)};
    float* o = out + c * ccs;
    for (int q = 0; q < 4; ++q) {
      _mm512_storeu_ps(o + (0 + q) * ps, z0[q]);
      _mm512_storeu_ps(o + (4 + q) * ps, _mm512_add_ps(z0[q], z1[q]));
      _mm512_storeu_ps(o + (8 + q) * ps, _mm512_sub_ps(z0[q], z1[q]));
      _mm512_storeu_ps(o + (12 + q) * ps, _mm512_xor_ps(z1[q], sign));
    }
  }
}

// Y' = A dY A^T for tiles of 16 output channels (grad weight's A panels): tile l's 2x2
// outputs start at dy[off[l]] of the first channel (channels plane apart, lane j =
// channel j < nch); output (a, b) exists where bit 2a + b of valid[l] is set. Position
// pos of tile l goes to out[pos*ps + l*16 + j].
void grad_output_channels_f32(const float* dy, i64 plane, i64 row, int nch, i64 nt, const i64* off,
                              const unsigned char* valid, float* out, i64 ps) {
  const __mmask16 mk = static_cast<__mmask16>(nch >= 16 ? 0xFFFF : ((1u << nch) - 1));
  const __m512i ch = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                        _mm512_set1_epi32(static_cast<int>(plane)));
  const __m512 z = _mm512_setzero_ps(), sign = _mm512_set1_ps(-0.0f);
  for (i64 l = 0; l < nt; ++l) {
    const float* s = dy + off[l];
    const unsigned v = valid[l];
    const __m512 d00 = (v & 1u) ? _mm512_mask_i32gather_ps(z, mk, ch, s, 4) : z;
    const __m512 d01 = (v & 2u) ? _mm512_mask_i32gather_ps(z, mk, ch, s + 1, 4) : z;
    const __m512 d10 = (v & 4u) ? _mm512_mask_i32gather_ps(z, mk, ch, s + row, 4) : z;
    const __m512 d11 = (v & 8u) ? _mm512_mask_i32gather_ps(z, mk, ch, s + row + 1, 4) : z;
    const __m512 z0[4] = {d00, _mm512_add_ps(d00, d01), _mm512_sub_ps(d00, d01), _mm512_xor_ps(d01, sign)};
    const __m512 z1[4] = {d10, _mm512_add_ps(d10, d11), _mm512_sub_ps(d10, d11), _mm512_xor_ps(d11, sign)};
    float* o = out + l * 16;
    for (int q = 0; q < 4; ++q) {
      _mm512_storeu_ps(o + (0 + q) * ps, z0[q]);
      _mm512_storeu_ps(o + (4 + q) * ps, _mm512_add_ps(z0[q], z1[q]));
      _mm512_storeu_ps(o + (8 + q) * ps, _mm512_sub_ps(z0[q], z1[q]));
      _mm512_storeu_ps(o + (12 + q) * ps, _mm512_xor_ps(z1[q], sign));
    }
  }
}

}  // namespace wino_avx512
}  // namespace pyconv
