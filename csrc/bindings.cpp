// pybind11 bindings: array conversion, validation, allocation, GIL release and dispatch.
// Nothing else lives here; the kernels are in the op files. Every entry point validates
// its arguments itself (callers may reach pyconv._core directly), before the GIL is
// released. Errors: ValueError (shapes, parameter values), TypeError (dtypes,
// non-arrays), IndexError (indices), OverflowError (sizes that overflow int64).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "batchnorm.h"
#include "conv.h"
#include "cpu.h"
#include "gemm.h"
#include "params.h"
#include "pool.h"

namespace py = pybind11;
using pyconv::i64;

namespace {

// ============================== common ==============================

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }
[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }

enum class Dtype { f32, f64 };

// `obj` must be a NumPy array of float32 or float64.
Dtype float_dtype(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    type_error(std::string(name) + " must be a numpy.ndarray, got " +
               std::string(py::str(py::type::of(obj).attr("__name__"))));
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  py::dtype dt = arr.dtype();
  if (dt.is(py::dtype::of<float>()) || (dt.kind() == 'f' && dt.itemsize() == 4)) return Dtype::f32;
  if (dt.is(py::dtype::of<double>()) || (dt.kind() == 'f' && dt.itemsize() == 8)) return Dtype::f64;
  type_error(std::string(name) + " must have dtype float32 or float64, got " +
             std::string(py::str(dt)));
}

// Every array in `arrays` (None entries skipped) must share dtype `want`.
void same_dtype(Dtype want, std::initializer_list<std::pair<const char*, py::handle>> arrays) {
  for (auto& [name, obj] : arrays) {
    if (obj.is_none()) continue;
    if (float_dtype(obj, name) != want)
      type_error(std::string("all floating inputs must share one dtype: ") + name + " has " +
                 std::string(py::str(py::reinterpret_borrow<py::array>(obj).dtype())) +
                 (want == Dtype::f32 ? ", expected float32" : ", expected float64"));
  }
}

// A C-contiguous, aligned, native-byte-order view or copy of `obj` as T. Any input
// layout (negative, zero or Fortran strides, unaligned buffers) gives the same values.
template <typename T>
py::array_t<T, py::array::c_style> contiguous(const py::handle& obj) {
  auto& api = py::detail::npy_api::get();
  PyObject* res = api.PyArray_FromAny_(
      obj.ptr(), py::dtype::of<T>().release().ptr(), 0, 0,
      py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_ |
          py::detail::npy_api::NPY_ARRAY_ENSUREARRAY_,
      nullptr);
  if (!res) throw py::error_already_set();
  return py::reinterpret_steal<py::array_t<T, py::array::c_style>>(res);
}

std::vector<i64> shape_of(const py::handle& obj) {
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  return std::vector<i64>(arr.shape(), arr.shape() + arr.ndim());
}

void require_ndim(const py::handle& obj, const char* name, std::initializer_list<int> ndims) {
  int nd = static_cast<int>(py::reinterpret_borrow<py::array>(obj).ndim());
  for (int want : ndims)
    if (nd == want) return;
  std::string allowed;
  for (int want : ndims) allowed += (allowed.empty() ? "" : " or ") + std::to_string(want);
  value_error(std::string(name) + " must have " + allowed + " dimensions, got " + std::to_string(nd));
}

// Outputs of this many bytes and more start on a 64-byte boundary (NumPy's own large
// allocations start 16 bytes past one), so kernels can write whole cache lines, streamed
// past the caches where csrc says so. Such an array is a view of a NumPy byte buffer (its
// base) 64 bytes longer than the data.
constexpr i64 kAlignedOutputBytes = 1 << 20;

// A new C-contiguous array of T; the element count is overflow-checked first.
template <typename T>
py::array_t<T> new_array(const std::vector<i64>& shape) {
  i64 count = 1;
  for (i64 d : shape) {
    if (d < 0) value_error("negative dimension in output shape");
    count = pyconv::checked_mul(count, d, "output");
  }
  const i64 bytes = pyconv::checked_mul(count, static_cast<i64>(sizeof(T)), "output bytes");
  // The C strides (itemsize times the trailing extents, formed from the last dim even
  // when an earlier one is 0) must fit too: (0, 2**62) has no elements but a stride of
  // itemsize * 2**62.
  i64 stride = static_cast<i64>(sizeof(T));
  for (std::size_t i = shape.size(); i > 1; --i) stride = pyconv::checked_mul(stride, shape[i - 1], "output strides");
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  if (bytes < kAlignedOutputBytes) return py::array_t<T>(s);
  py::array_t<std::uint8_t> buf(static_cast<py::ssize_t>(bytes + 64));
  std::uint8_t* raw = buf.mutable_data();
  const std::size_t skip = (64 - (reinterpret_cast<std::uintptr_t>(raw) & 63)) & 63;
  return py::array_t<T>(s, reinterpret_cast<T*>(raw + skip), buf);  // C strides
}

// Calls f(T{}) with T = float or double according to `dt`.
template <typename F>
auto dispatch_float(Dtype dt, F&& f) {
  if (dt == Dtype::f32) return f(float{});
  return f(double{});
}

void register_common(py::module_& m) {
  m.def("kernel_info", []() {
    py::dict d;
    d["isa"] = pyconv::isa_name(pyconv::active_isa());
    d["detected_isa"] = pyconv::isa_name(pyconv::detected_isa());
    d["threads"] = pyconv::num_threads();
    d["openmp"] = pyconv::openmp_enabled();
    d["version"] = PYCONV_VERSION;
    return d;
  });
  m.def("set_num_threads", [](py::object n) {
    if (!py::isinstance<py::int_>(n) || py::isinstance<py::bool_>(n))
      type_error("set_num_threads: n must be an int");
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(n.ptr(), &overflow);
    if (overflow || v < 1 || v > 4096)
      value_error("set_num_threads: n must be in [1, 4096], got " + std::string(py::str(n)));
    pyconv::set_num_threads(static_cast<int>(v));
  });
  m.def("get_num_threads", []() { return pyconv::num_threads(); });
  m.def("_set_isa", [](const std::string& name) {
    try {
      pyconv::set_active_isa(name);
    } catch (const std::invalid_argument& e) {
      value_error(e.what());
    }
  }, "Test hook: force the kernel ISA ('scalar', 'avx2', 'avx512') for this process.");
}

// ============================== gemm ==============================
// (section owned by the GEMM work; the op sections below call no code from here)

// A 2-D float array as (pointer, element strides). Aligned native-order arrays whose
// strides are whole elements are used in place (any sign, zero included); anything else
// is first copied to a C-contiguous array, which gives the same values.
template <typename T>
struct MatrixView {
  py::object keep;  // owns the memory `data` points into
  const T* data = nullptr;
  i64 rows = 0, cols = 0, rs = 0, cs = 0;
};

template <typename T>
MatrixView<T> matrix_view(const py::handle& obj) {
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  MatrixView<T> v;
  v.rows = arr.shape(0);
  v.cols = arr.shape(1);
  const i64 item = static_cast<i64>(sizeof(T));
  const bool usable = arr.dtype().itemsize() == item && arr.dtype().attr("isnative").cast<bool>() &&
                      (arr.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) &&
                      arr.strides(0) % item == 0 && arr.strides(1) % item == 0;
  if (usable) {
    v.keep = arr;
    v.data = static_cast<const T*>(arr.data());
    v.rs = arr.strides(0) / item;
    v.cs = arr.strides(1) / item;
  } else {
    auto c = contiguous<T>(obj);
    v.keep = c;
    v.data = c.data();
    v.rs = v.cols;
    v.cs = 1;
  }
  return v;
}

template <typename T>
py::object matmul_impl(const py::handle& a_obj, const py::handle& b_obj) {
  MatrixView<T> a = matrix_view<T>(a_obj);
  MatrixView<T> b = matrix_view<T>(b_obj);
  const i64 M = a.rows, K = a.cols, N = b.cols;
  py::array_t<T> out = new_array<T>({M, N});
  if (M == 0 || N == 0) return std::move(out);
  T* c = out.mutable_data();
  const int threads = pyconv::num_threads();
  {
    py::gil_scoped_release release;
    pyconv::StridedB<T> bsrc(b.data, b.rs, b.cs);
    pyconv::gemm<T>(M, N, K, a.data, a.rs, a.cs, bsrc, c, N, 1, false, threads);
  }
  return std::move(out);
}

// Test hook for the parts of the GEMM contract matmul does not reach: a caller-provided
// workspace of exactly gemm_workspace_elems elements (guarded by canaries that must
// survive) and accumulate = true (returns c0 + a @ b when c0 is given).
template <typename T>
py::object gemm_checked_impl(const py::handle& a_obj, const py::handle& b_obj,
                             const py::handle& c0_obj, int threads) {
  MatrixView<T> a = matrix_view<T>(a_obj);
  MatrixView<T> b = matrix_view<T>(b_obj);
  const i64 M = a.rows, K = a.cols, N = b.cols;
  py::array_t<T> out = new_array<T>({M, N});
  const bool accumulate = !c0_obj.is_none();
  if (accumulate) {
    auto c0 = contiguous<T>(c0_obj);
    if (c0.ndim() != 2 || c0.shape(0) != M || c0.shape(1) != N)
      value_error("_gemm_checked: c0 must have shape (M, N)");
    const T* src = c0.data();
    T* dst = out.mutable_data();
    for (i64 i = 0; i < M * N; ++i) dst[i] = src[i];
  }
  if (M == 0 || N == 0) return std::move(out);
  const std::size_t ws = pyconv::gemm_workspace_elems<T>(M, N, K, threads);
  constexpr std::size_t kGuard = 64;
  const std::size_t total = ws + 2 * kGuard;
  std::vector<T> raw(total + 64 / sizeof(T));
  // 64-byte aligned start of the workspace proper, kGuard canaries either side.
  std::uintptr_t base = reinterpret_cast<std::uintptr_t>(raw.data() + kGuard);
  base = (base + 63) / 64 * 64;
  T* wsp = reinterpret_cast<T*>(base);
  const T canary = static_cast<T>(-12345.5);
  for (std::size_t i = 0; i < kGuard; ++i) wsp[-static_cast<std::ptrdiff_t>(i) - 1] = canary;
  for (std::size_t i = 0; i < kGuard; ++i) wsp[ws + i] = canary;
  T* c = out.mutable_data();
  {
    py::gil_scoped_release release;
    pyconv::StridedB<T> bsrc(b.data, b.rs, b.cs);
    pyconv::gemm<T>(M, N, K, a.data, a.rs, a.cs, bsrc, c, N, 1, accumulate, threads, wsp);
  }
  for (std::size_t i = 0; i < kGuard; ++i)
    if (wsp[-static_cast<std::ptrdiff_t>(i) - 1] != canary || wsp[ws + i] != canary)
      throw std::runtime_error("_gemm_checked: workspace guard overwritten");
  return std::move(out);
}

void register_gemm(py::module_& m) {
  m.def("_gemm_checked", [](py::object a, py::object b, py::object c0, py::object threads) -> py::object {
    Dtype dt = float_dtype(a, "a");
    if (float_dtype(b, "b") != dt) same_dtype(dt, {{"b", b}});
    if (!c0.is_none() && float_dtype(c0, "c0") != dt) same_dtype(dt, {{"c0", c0}});
    require_ndim(a, "a", {2});
    require_ndim(b, "b", {2});
    if (!py::isinstance<py::int_>(threads)) type_error("_gemm_checked: threads must be an int");
    long long t = threads.cast<long long>();
    if (t < 1 || t > 64) value_error("_gemm_checked: threads must be in [1, 64]");
    std::vector<i64> sa = shape_of(a), sb = shape_of(b);
    if (sa[1] != sb[0]) value_error("_gemm_checked: inner dimensions differ");
    pyconv::checked_mul(pyconv::checked_mul(sa[0], sb[1], "matmul"), sa[1] > 0 ? sa[1] : 1, "matmul");
    return dispatch_float(dt, [&](auto tag) -> py::object {
      return gemm_checked_impl<decltype(tag)>(a, b, c0, static_cast<int>(t));
    });
  }, py::arg("a"), py::arg("b"), py::arg("c0") = py::none(), py::arg("threads") = 1,
  "Test hook: a @ b (+ c0) through gemm() with an explicit, canary-guarded workspace.");

  m.def("matmul", [](py::object a, py::object b) -> py::object {
    Dtype dt = float_dtype(a, "a");
    if (float_dtype(b, "b") != dt) same_dtype(dt, {{"b", b}});  // raises the mixed-dtype TypeError
    require_ndim(a, "a", {2});
    require_ndim(b, "b", {2});
    std::vector<i64> sa = shape_of(a), sb = shape_of(b);
    if (sa[1] != sb[0])
      value_error("matmul: inner dimensions differ: a has shape (" + std::to_string(sa[0]) + ", " +
                  std::to_string(sa[1]) + "), b has shape (" + std::to_string(sb[0]) + ", " +
                  std::to_string(sb[1]) + ")");
    // The K-sum touches M*N*K products; reject sizes whose index arithmetic could wrap.
    pyconv::checked_mul(pyconv::checked_mul(sa[0], sb[1], "matmul"), sa[1] > 0 ? sa[1] : 1, "matmul");
    return dispatch_float(dt, [&](auto tag) -> py::object {
      return matmul_impl<decltype(tag)>(a, b);
    });
  }, py::arg("a"), py::arg("b"),
  "a @ b for 2-D float32/float64 arrays of one dtype (any strides); a new C-contiguous array.");

  m.def("_fma_peak_gflops", [](py::object threads, py::object seconds) {
    if (!py::isinstance<py::int_>(threads) || py::isinstance<py::bool_>(threads))
      type_error("_fma_peak_gflops: threads must be an int");
    if (!py::isinstance<py::float_>(seconds) && !py::isinstance<py::int_>(seconds))
      type_error("_fma_peak_gflops: seconds must be a number");
    int overflow = 0;
    long long t = PyLong_AsLongLongAndOverflow(threads.ptr(), &overflow);
    if (overflow) t = -1;  // out of range either way: the check below names the range
    double s = seconds.cast<double>();
    if (t < 1 || t > 4096) value_error("_fma_peak_gflops: threads must be in [1, 4096], got " + std::to_string(t));
    if (!(s > 0.0 && s <= 60.0)) value_error("_fma_peak_gflops: seconds must be in (0, 60], got " + std::to_string(s));
    py::gil_scoped_release release;
    return pyconv::fma_peak_gflops(static_cast<int>(t), s);
  }, py::arg("threads"), py::arg("seconds"),
  "FP32 FMA peak of this machine in GFLOP/s (12 independent FMA chains per thread, 512-bit "
  "on AVX-512 CPUs, 256-bit on AVX2 ones; a portable multiply-add loop on CPUs without AVX2).");
}

// ============================ end gemm ============================

// ============================== conv ==============================

// Builds and validates ConvParams from x (N, C_in, H, W), w (C_out, C_in/g, kH, kW) and the
// normalised parameters; sets the output sizes. Throws ValueError / OverflowError.
pyconv::ConvParams conv_params(const std::vector<i64>& xs, const std::vector<i64>& ws, i64 sh,
                               i64 sw, i64 ph_lo, i64 ph_hi, i64 pw_lo, i64 pw_hi, i64 dh,
                               i64 dw, i64 groups) {
  if (groups < 1) value_error("groups must be >= 1, got " + std::to_string(groups));
  if (sh < 1 || sw < 1)
    value_error("stride must be >= 1, got (" + std::to_string(sh) + ", " + std::to_string(sw) + ")");
  if (dh < 1 || dw < 1)
    value_error("dilation must be >= 1, got (" + std::to_string(dh) + ", " + std::to_string(dw) + ")");
  if (ph_lo < 0 || ph_hi < 0 || pw_lo < 0 || pw_hi < 0)
    value_error("padding must be >= 0, got ((" + std::to_string(ph_lo) + ", " + std::to_string(ph_hi) +
                "), (" + std::to_string(pw_lo) + ", " + std::to_string(pw_hi) + "))");
  if (ws[2] < 1 || ws[3] < 1)
    value_error("weight: kernel_size must be >= 1, got (" + std::to_string(ws[2]) + ", " +
                std::to_string(ws[3]) + ")");
  if (xs[1] < 1) value_error("input must have at least one channel, got shape[1] = 0");
  if (ws[0] < 1) value_error("weight must have at least one output channel, got shape[0] = 0");
  if (xs[1] % groups != 0)
    value_error("groups=" + std::to_string(groups) + " must divide the input channels (" +
                std::to_string(xs[1]) + ")");
  if (ws[0] % groups != 0)
    value_error("groups=" + std::to_string(groups) + " must divide the output channels (weight.shape[0] = " +
                std::to_string(ws[0]) + ")");
  if (ws[1] != xs[1] / groups)
    value_error("weight.shape[1] must be input channels / groups = " + std::to_string(xs[1] / groups) +
                ", got weight of shape (" + std::to_string(ws[0]) + ", " + std::to_string(ws[1]) + ", " +
                std::to_string(ws[2]) + ", " + std::to_string(ws[3]) + ")");
  pyconv::ConvParams p;
  p.n = xs[0];
  p.c_in = xs[1];
  p.c_out = ws[0];
  p.groups = groups;
  p.h = pyconv::Window{xs[2], ws[2], sh, ph_lo, ph_hi, dh, 0};
  p.w = pyconv::Window{xs[3], ws[3], sw, pw_lo, pw_hi, dw, 0};
  try {
    pyconv::conv_validate(p);
  } catch (const std::invalid_argument& e) {
    value_error(e.what());
  }
  return p;
}

pyconv::ConvPath conv_path_arg(const std::string& path, const pyconv::ConvParams& p) {
  pyconv::ConvPath id;
  try {
    id = pyconv::conv_path_from_name(path.c_str());
  } catch (const std::invalid_argument& e) {
    value_error(e.what());
  }
  if (!pyconv::conv_path_supports(id, p))
    value_error(std::string("path '") + path + "' does not support these convolution parameters (it needs " +
                pyconv::conv_path_needs(id) + ")");
  return id;
}

void register_conv(py::module_& m) {
  m.def(
      "conv2d_forward",
      [](py::object x, py::object w, py::object bias, i64 sh, i64 sw, i64 ph_lo, i64 ph_hi, i64 pw_lo,
         i64 pw_hi, i64 dh, i64 dw, i64 groups, const std::string& path) -> py::object {
        Dtype dt = float_dtype(x, "input");
        same_dtype(dt, {{"weight", w}, {"bias", bias}});
        require_ndim(x, "input", {4});
        require_ndim(w, "weight", {4});
        std::vector<i64> xs = shape_of(x), ws = shape_of(w);
        pyconv::ConvParams p = conv_params(xs, ws, sh, sw, ph_lo, ph_hi, pw_lo, pw_hi, dh, dw, groups);
        if (!bias.is_none()) {
          require_ndim(bias, "bias", {1});
          if (shape_of(bias)[0] != p.c_out)
            value_error("bias must have shape (" + std::to_string(p.c_out) + ",), got (" +
                        std::to_string(shape_of(bias)[0]) + ",)");
        }
        pyconv::ConvPath id = conv_path_arg(path, p);
        return dispatch_float(dt, [&](auto tag) -> py::object {
          using T = decltype(tag);
          auto xc = contiguous<T>(x);
          auto wc = contiguous<T>(w);
          py::array_t<T, py::array::c_style> bc;
          if (!bias.is_none()) bc = contiguous<T>(bias);
          auto y = new_array<T>({p.n, p.c_out, p.h.out, p.w.out});
          const T* xp = xc.data();
          const T* wp = wc.data();
          const T* bp = bias.is_none() ? nullptr : bc.data();
          T* yp = y.mutable_data();
          {
            py::gil_scoped_release release;
            pyconv::conv2d_forward<T>(p, xp, wp, bp, yp, id);
          }
          return std::move(y);
        });
      },
      py::arg("input"), py::arg("weight"), py::arg("bias"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("pad_h_lo"), py::arg("pad_h_hi"), py::arg("pad_w_lo"), py::arg("pad_w_hi"),
      py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"), py::arg("path") = "auto",
      "2D convolution forward on NCHW arrays with normalised parameters; path forces a candidate.");

  m.def(
      "conv2d_backward",
      [](py::object dy, py::object x, py::object w, i64 sh, i64 sw, i64 ph_lo, i64 ph_hi, i64 pw_lo,
         i64 pw_hi, i64 dh, i64 dw, i64 groups, bool need_input, bool need_weight, bool need_bias,
         const std::string& path) -> py::tuple {
        Dtype dt = float_dtype(dy, "grad_output");
        same_dtype(dt, {{"input", x}, {"weight", w}});
        require_ndim(dy, "grad_output", {4});
        require_ndim(x, "input", {4});
        require_ndim(w, "weight", {4});
        std::vector<i64> xs = shape_of(x), ws = shape_of(w), ys = shape_of(dy);
        pyconv::ConvParams p = conv_params(xs, ws, sh, sw, ph_lo, ph_hi, pw_lo, pw_hi, dh, dw, groups);
        std::vector<i64> want{p.n, p.c_out, p.h.out, p.w.out};
        if (ys != want)
          value_error("grad_output must have shape (" + std::to_string(want[0]) + ", " + std::to_string(want[1]) +
                      ", " + std::to_string(want[2]) + ", " + std::to_string(want[3]) + "), got (" +
                      std::to_string(ys[0]) + ", " + std::to_string(ys[1]) + ", " + std::to_string(ys[2]) +
                      ", " + std::to_string(ys[3]) + ")");
        pyconv::ConvPath id = conv_path_arg(path, p);
        return dispatch_float(dt, [&](auto tag) -> py::tuple {
          using T = decltype(tag);
          auto dyc = contiguous<T>(dy);
          py::array_t<T, py::array::c_style> xc, wc;
          if (need_weight) xc = contiguous<T>(x);
          if (need_input) wc = contiguous<T>(w);
          py::object gx = py::none(), gw = py::none(), gb = py::none();
          T *dxp = nullptr, *dwp = nullptr, *dbp = nullptr;
          if (need_input) {
            auto a = new_array<T>(xs);
            dxp = a.mutable_data();
            gx = std::move(a);
          }
          if (need_weight) {
            auto a = new_array<T>(ws);
            dwp = a.mutable_data();
            gw = std::move(a);
          }
          if (need_bias) {
            auto a = new_array<T>({p.c_out});
            dbp = a.mutable_data();
            gb = std::move(a);
          }
          const T* dyp = dyc.data();
          const T* xp = need_weight ? xc.data() : nullptr;
          const T* wp = need_input ? wc.data() : nullptr;
          {
            py::gil_scoped_release release;
            pyconv::conv2d_backward<T>(p, dyp, xp, wp, dxp, dwp, dbp, id);
          }
          return py::make_tuple(gx, gw, gb);
        });
      },
      py::arg("grad_output"), py::arg("input"), py::arg("weight"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("pad_h_lo"), py::arg("pad_h_hi"), py::arg("pad_w_lo"), py::arg("pad_w_hi"),
      py::arg("dilation_h"), py::arg("dilation_w"), py::arg("groups"), py::arg("need_input") = true,
      py::arg("need_weight") = true, py::arg("need_bias") = true, py::arg("path") = "auto",
      "2D convolution backward: (grad_input, grad_weight, grad_bias), None where not needed.");

  m.def(
      "conv_path",
      [](const std::vector<i64>& xs, const std::vector<i64>& ws, i64 sh, i64 sw, i64 ph_lo, i64 ph_hi,
         i64 pw_lo, i64 pw_hi, i64 dh, i64 dw, i64 groups) {
        if (xs.size() != 4 || ws.size() != 4) value_error("conv_path: shapes must have 4 entries");
        pyconv::ConvParams p = conv_params(xs, ws, sh, sw, ph_lo, ph_hi, pw_lo, pw_hi, dh, dw, groups);
        return std::string(pyconv::conv_path_name(pyconv::conv_choose_path(p)));
      },
      "Name of the candidate the automatic choice takes for these shapes and parameters.");
}

// ============================ end conv ============================

// ============================== pool ==============================

// `obj` must be an int64 ndarray named `name` with exactly `shape`.
void pool_require_indices(const py::handle& obj, const char* name, const std::vector<i64>& shape) {
  if (!py::isinstance<py::array>(obj))
    type_error(std::string(name) + " must be a numpy.ndarray of int64, got " +
               std::string(py::str(py::type::of(obj).attr("__name__"))));
  py::dtype dt = py::reinterpret_borrow<py::array>(obj).dtype();
  if (!(dt.kind() == 'i' && dt.itemsize() == 8))
    type_error(std::string(name) + " must have dtype int64, got " + std::string(py::str(dt)));
  std::vector<i64> s = shape_of(obj);
  if (s != shape) {
    auto fmt = [](const std::vector<i64>& v) {
      std::string r = "(";
      for (std::size_t i = 0; i < v.size(); ++i) r += (i ? ", " : "") + std::to_string(v[i]);
      return r + ")";
    };
    value_error(std::string(name) + " must have the shape of the values " + fmt(shape) + ", got " + fmt(s));
  }
}

// An integer argument: a Python int or anything with __index__ (NumPy integers), not a
// bool; TypeError otherwise, OverflowError beyond int64.
i64 pool_int_arg(const py::handle& v, const char* name) {
  if (py::isinstance<py::bool_>(v) || PyFloat_Check(v.ptr()) || !PyIndex_Check(v.ptr()))
    type_error(std::string(name) + " must be an int, got " +
               std::string(py::str(py::type::of(v).attr("__name__"))));
  py::object as_int = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
  if (!as_int) throw py::error_already_set();
  int overflow = 0;
  long long r = PyLong_AsLongLongAndOverflow(as_int.ptr(), &overflow);
  if (overflow) throw std::overflow_error(std::string(name) + " is out of the int64 range");
  if (r == -1 && PyErr_Occurred()) throw py::error_already_set();
  return static_cast<i64>(r);
}

[[noreturn]] void pool_index_error(const std::vector<i64>& shape, const i64* idx, i64 pos, i64 limit,
                            const char* what) {
  i64 w = shape[3], h = shape[2], c = shape[1];
  i64 r = pos;
  i64 j = r % w; r /= w;
  i64 i = r % h; r /= h;
  i64 ch = r % c; r /= c;
  throw py::index_error("indices: index " + std::to_string(idx[pos]) + " at position (" +
                        std::to_string(r) + ", " + std::to_string(ch) + ", " + std::to_string(i) +
                        ", " + std::to_string(j) + ") is out of range [0, " + std::to_string(limit) +
                        ") for " + what);
}

// Shared body of max_pool2d_backward (backward: scatter-add into the input's shape) and
// max_unpool2d (assignment into the output's shape): src and its int64 indices are
// (N, C, h, w); the destination is a zero (N, C, H, W). A bad index is an IndexError and
// the fresh destination is dropped, so the caller never sees a partial write.
py::object pool_scatter(py::object src, py::object indices, py::object h_obj, py::object w_obj,
                        bool backward) {
  const char* src_name = backward ? "grad_output" : "input";
  const char* size_name = backward ? "input_shape" : "output_size";
  Dtype dt = float_dtype(src, src_name);
  require_ndim(src, src_name, {4});
  std::vector<i64> s = shape_of(src);
  pool_require_indices(indices, "indices", s);
  i64 H = pool_int_arg(h_obj, backward ? "input height" : "output height");
  i64 W = pool_int_arg(w_obj, backward ? "input width" : "output width");
  if (H < 1 || W < 1)
    value_error(std::string(size_name) + ": spatial sizes must be >= 1, got (" + std::to_string(H) +
                ", " + std::to_string(W) + ")");
  i64 planes = pyconv::checked_mul(s[0], s[1], "batch*channels");
  i64 src_plane = pyconv::checked_mul(s[2], s[3], backward ? "grad_output plane" : "input plane");
  i64 dst_plane = pyconv::checked_mul(H, W, backward ? "input plane" : "output plane");
  (void)src_plane;  // only checked here: the kernels take the sizes
  return dispatch_float(dt, [&](auto tag) -> py::object {
    using T = decltype(tag);
    auto sc = contiguous<T>(src);
    auto ic = contiguous<int64_t>(indices);
    auto dst = new_array<T>({s[0], s[1], H, W});
    const T* sp = sc.data();
    const i64* ip = ic.data();
    T* dp = dst.mutable_data();
    i64 bad;
    {
      py::gil_scoped_release release;
      bad = backward ? pyconv::max_pool_backward(planes, s[2], s[3], H, W, sp, ip, dp)
                     : pyconv::max_unpool(planes, s[2], s[3], H, W, sp, ip, dp);
    }
    if (bad >= 0)
      pool_index_error(s, ip, bad, dst_plane,
                       backward ? "an input plane of input_shape's H*W elements"
                                : "an output plane of H*W elements");
    return dst;
  });
}

void register_pool(py::module_& m) {
  m.def(
      "max_pool2d",
      [](py::object x, py::object kh, py::object kw, py::object sh, py::object sw, py::object ph,
         py::object pw, py::object dh, py::object dw, bool ceil_mode, bool want_indices) {
        Dtype dt = float_dtype(x, "input");
        require_ndim(x, "input", {4});
        std::vector<i64> s = shape_of(x);
        pyconv::PoolParams p;
        p.n = s[0];
        p.c = s[1];
        p.h.in = s[2];
        p.w.in = s[3];
        p.h.kernel = pool_int_arg(kh, "kernel_size");
        p.w.kernel = pool_int_arg(kw, "kernel_size");
        p.h.stride = pool_int_arg(sh, "stride");
        p.w.stride = pool_int_arg(sw, "stride");
        p.h.pad_lo = p.h.pad_hi = pool_int_arg(ph, "padding");
        p.w.pad_lo = p.w.pad_hi = pool_int_arg(pw, "padding");
        p.h.dilation = pool_int_arg(dh, "dilation");
        p.w.dilation = pool_int_arg(dw, "dilation");
        p.ceil_mode = ceil_mode;
        try {
          pyconv::pool_resolve(p);
        } catch (const std::invalid_argument& e) {
          value_error(std::string("max_pool2d: ") + e.what());
        }
        std::vector<i64> oshape{p.n, p.c, p.h.out, p.w.out};
        return dispatch_float(dt, [&](auto tag) -> py::tuple {
          using T = decltype(tag);
          auto xc = contiguous<T>(x);
          auto out = new_array<T>(oshape);
          py::object idx_obj = py::none();
          i64* ip = nullptr;
          if (want_indices) {
            auto idx = new_array<int64_t>(oshape);
            ip = idx.mutable_data();
            idx_obj = idx;
          }
          const T* xp = xc.data();
          T* op = out.mutable_data();
          {
            py::gil_scoped_release release;
            pyconv::max_pool2d_forward(p, xp, op, ip);
          }
          return py::make_tuple(out, idx_obj);
        });
      },
      py::arg("input"), py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"),
      py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("ceil_mode"), py::arg("want_indices"),
      "Max-pool over (N, C, H, W): returns (out, indices or None).");

  // grad_output / indices (N, C, Ho, Wo) -> grad_input (N, C, in_h, in_w).
  m.def(
      "max_pool2d_backward",
      [](py::object grad_output, py::object indices, py::object in_h, py::object in_w) {
        return pool_scatter(grad_output, indices, in_h, in_w, true);
      },
      py::arg("grad_output"), py::arg("indices"), py::arg("in_h"), py::arg("in_w"),
      "Scatter-add grad_output through indices into a zero (N, C, in_h, in_w) grad_input.");

  // input / indices (N, C, H, W) -> output (N, C, out_h, out_w).
  m.def(
      "max_unpool2d",
      [](py::object x, py::object indices, py::object out_h, py::object out_w) {
        return pool_scatter(x, indices, out_h, out_w, false);
      },
      py::arg("input"), py::arg("indices"), py::arg("out_h"), py::arg("out_w"),
      "Zero (N, C, out_h, out_w) output with out[plane][indices] = input (last write wins).");

  m.def(
      "_max_pool2d_variant",
      [](i64 h, i64 w, i64 kh, i64 kw, i64 sh, i64 sw, i64 ph, i64 pw, i64 dh, i64 dw,
         bool ceil_mode, bool is_double) {
        pyconv::PoolParams p;
        p.n = 1;
        p.c = 1;
        p.h.in = h;
        p.w.in = w;
        p.h.kernel = kh;
        p.w.kernel = kw;
        p.h.stride = sh;
        p.w.stride = sw;
        p.h.pad_lo = p.h.pad_hi = ph;
        p.w.pad_lo = p.w.pad_hi = pw;
        p.h.dilation = dh;
        p.w.dilation = dw;
        p.ceil_mode = ceil_mode;
        try {
          pyconv::pool_resolve(p);
        } catch (const std::invalid_argument& e) {
          value_error(e.what());
        }
        return std::string(pyconv::max_pool2d_variant(p, is_double, true));
      },
      "Test hook: the forward row-kernel variant chosen for these parameters.");
}

// ============================ end pool ============================

// ============================ batchnorm ===========================

std::string bn_shape_str(const std::vector<i64>& shape) {
  std::string r = "(";
  for (std::size_t i = 0; i < shape.size(); ++i)
    r += (i ? ", " : "") + std::to_string(shape[i]);
  return r + (shape.size() == 1 ? ",)" : ")");
}

// A Python real number (int, float, NumPy scalar; not bool) as double.
double bn_real(const py::handle& obj, const char* name) {
  if (obj.is_none() || PyBool_Check(obj.ptr()) || !PyNumber_Check(obj.ptr()) ||
      PyComplex_Check(obj.ptr()) || py::isinstance<py::array>(obj) || py::isinstance<py::str>(obj))
    type_error(std::string(name) + " must be a real number, got " +
               std::string(py::str(py::type::of(obj).attr("__name__"))));
  double v = PyFloat_AsDouble(obj.ptr());
  if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  return v;
}

bool bn_bool(const py::handle& obj, const char* name) {
  if (PyBool_Check(obj.ptr())) return obj.ptr() == Py_True;
  py::object np_bool = py::module_::import("numpy").attr("bool_");
  if (py::isinstance(obj, np_bool)) return py::bool_(py::reinterpret_borrow<py::object>(obj));
  type_error(std::string(name) + " must be a bool, got " +
             std::string(py::str(py::type::of(obj).attr("__name__"))));
}

// (N, C, S) of an input of rank >= 2.
pyconv::BatchNormParams bn_params(const std::vector<i64>& shape, const char* name) {
  if (shape.size() < 2)
    value_error(std::string(name) + " must have at least 2 dimensions (N, C, ...), got shape " +
                bn_shape_str(shape));
  pyconv::BatchNormParams p;
  p.n = shape[0];
  p.c = shape[1];
  p.s = 1;
  for (std::size_t i = 2; i < shape.size(); ++i) p.s = pyconv::checked_mul(p.s, shape[i], name);
  pyconv::checked_mul(pyconv::checked_mul(p.n, p.c, name), p.s, name);
  return p;
}

// A per-channel vector (None allowed): 1-D of length C.
void bn_check_vec(const py::handle& obj, const char* name, i64 c) {
  if (obj.is_none()) return;
  std::vector<i64> shape = shape_of(obj);
  if (shape.size() != 1 || shape[0] != c)
    value_error(std::string(name) + " must have shape (" + std::to_string(c) +
                ",) to match the input's channel count C = " + std::to_string(c) + ", got shape " +
                bn_shape_str(shape));
}

// The values of a checked per-channel vector as doubles (empty when None).
template <typename T>
std::vector<double> bn_values(const py::handle& obj) {
  if (obj.is_none()) return {};
  auto a = contiguous<T>(obj);
  const T* d = a.data();
  return std::vector<double>(d, d + a.size());
}

void bn_check_eps(double eps) {
  if (!std::isfinite(eps) || eps < 0)
    value_error("eps must be finite and >= 0, got " + std::to_string(eps));
}

void register_batchnorm(py::module_& m) {
  m.def(
      "batch_norm_forward",
      [](py::object input, py::object running_mean, py::object running_var, py::object weight,
         py::object bias, py::object training, py::object momentum, py::object eps,
         py::object return_stats) -> py::object {
        Dtype dt = float_dtype(input, "input");
        same_dtype(dt, {{"running_mean", running_mean},
                        {"running_var", running_var},
                        {"weight", weight},
                        {"bias", bias}});
        const bool train = bn_bool(training, "training");
        const bool want_stats = bn_bool(return_stats, "return_stats");
        const double mom = bn_real(momentum, "momentum");
        const double e = bn_real(eps, "eps");
        bn_check_eps(e);
        if (!std::isfinite(mom)) value_error("momentum must be finite, got " + std::to_string(mom));
        const std::vector<i64> shape = shape_of(input);
        pyconv::BatchNormParams p = bn_params(shape, "input");
        p.eps = e;
        p.momentum = mom;
        bn_check_vec(running_mean, "running_mean", p.c);
        bn_check_vec(running_var, "running_var", p.c);
        bn_check_vec(weight, "weight", p.c);
        bn_check_vec(bias, "bias", p.c);
        if (!train) {
          if (running_mean.is_none() || running_var.is_none())
            value_error(std::string("running_mean and running_var are required when training=False (") +
                        (running_mean.is_none() ? "running_mean" : "running_var") + " is None)");
        } else {
          if (p.n * p.s < 2)
            value_error("batch_norm: expected more than 1 value per channel when training, got input "
                        "of shape " + bn_shape_str(shape));
          for (auto& [name, obj] : {std::pair<const char*, py::object>{"running_mean", running_mean},
                                    std::pair<const char*, py::object>{"running_var", running_var}}) {
            if (!obj.is_none() && !py::reinterpret_borrow<py::array>(obj).writeable())
              value_error(std::string(name) + " is read-only; training updates it in place");
          }
          if (!running_mean.is_none() && !running_var.is_none() &&
              py::module_::import("numpy").attr("shares_memory")(running_mean, running_var).cast<bool>())
            value_error("running_mean and running_var share memory; training updates both in place");
        }
        return dispatch_float(dt, [&](auto tag) -> py::object {
          using T = decltype(tag);
          auto x = contiguous<T>(input);
          auto out = new_array<T>(shape);
          std::vector<double> rm = bn_values<T>(running_mean), rv = bn_values<T>(running_var);
          std::vector<double> w = bn_values<T>(weight), b = bn_values<T>(bias);
          std::vector<double> bmean(static_cast<std::size_t>(p.c)), bm2(static_cast<std::size_t>(p.c));
          {
            py::gil_scoped_release nogil;
            pyconv::batchnorm_forward<T>(x.data(), out.mutable_data(), p, train,
                                         rm.empty() ? nullptr : rm.data(),
                                         rv.empty() ? nullptr : rv.data(),
                                         w.empty() ? nullptr : w.data(),
                                         b.empty() ? nullptr : b.data(), bmean.data(), bm2.data());
          }
          if (train) {
            const double count = static_cast<double>(p.n * p.s);
            if (!running_mean.is_none()) {
              py::array_t<T> upd(static_cast<py::ssize_t>(p.c));
              T* u = upd.mutable_data();
              for (i64 c = 0; c < p.c; ++c) u[c] = static_cast<T>((1.0 - mom) * rm[c] + mom * bmean[c]);
              running_mean.attr("__setitem__")(py::ellipsis(), upd);
            }
            if (!running_var.is_none()) {
              py::array_t<T> upd(static_cast<py::ssize_t>(p.c));
              T* u = upd.mutable_data();
              for (i64 c = 0; c < p.c; ++c)
                u[c] = static_cast<T>((1.0 - mom) * rv[c] + mom * (bm2[c] / (count - 1.0)));
              running_var.attr("__setitem__")(py::ellipsis(), upd);
            }
          }
          if (!want_stats) return std::move(out);
          // Saved statistics in float64 whatever the input dtype (a float32 mean would
          // cost the backward pass its accuracy).
          py::array_t<double> smean(static_cast<py::ssize_t>(p.c)), sinv(static_cast<py::ssize_t>(p.c));
          const double count = static_cast<double>(p.n * p.s);
          for (i64 c = 0; c < p.c; ++c) {
            double mean = train ? bmean[c] : rm[c];
            double var = train ? bm2[c] / count : rv[c];
            smean.mutable_data()[c] = mean;
            sinv.mutable_data()[c] = 1.0 / std::sqrt(var + e);
          }
          return py::make_tuple(out, smean, sinv);
        });
      },
      py::arg("input"), py::arg("running_mean"), py::arg("running_var"), py::arg("weight"),
      py::arg("bias"), py::arg("training"), py::arg("momentum"), py::arg("eps"),
      py::arg("return_stats") = false,
      "Batch norm over every axis but 1 of input (rank >= 2). Training normalises with the\n"
      "biased batch variance and updates the given running stats in place (unbiased\n"
      "variance into running_var); eval uses the running stats. return_stats=True returns\n"
      "(out, save_mean, save_invstd), the statistics used, in float64.");

  m.def(
      "batch_norm_backward",
      [](py::object grad_output, py::object input, py::object weight, py::object running_mean,
         py::object running_var, py::object training, py::object eps, py::object save_mean,
         py::object save_invstd) -> py::tuple {
        Dtype dt = float_dtype(input, "input");
        same_dtype(dt, {{"grad_output", grad_output},
                        {"weight", weight},
                        {"running_mean", running_mean},
                        {"running_var", running_var}});
        const bool train = bn_bool(training, "training");
        const double e = bn_real(eps, "eps");
        bn_check_eps(e);
        const std::vector<i64> shape = shape_of(input);
        pyconv::BatchNormParams p = bn_params(shape, "input");
        p.eps = e;
        if (shape_of(grad_output) != shape)
          value_error("grad_output shape " + bn_shape_str(shape_of(grad_output)) +
                      " must equal the input shape " + bn_shape_str(shape));
        bn_check_vec(weight, "weight", p.c);
        bn_check_vec(running_mean, "running_mean", p.c);
        bn_check_vec(running_var, "running_var", p.c);
        if (!train) {
          if (running_mean.is_none() || running_var.is_none())
            value_error(std::string("running_mean and running_var are required when training=False (") +
                        (running_mean.is_none() ? "running_mean" : "running_var") + " is None)");
        } else if (p.n * p.s < 2) {
          value_error("batch_norm_backward: expected more than 1 value per channel when training, "
                      "got input of shape " + bn_shape_str(shape));
        }
        if (save_mean.is_none() != save_invstd.is_none())
          value_error("save_mean and save_invstd must be given together (one is None)");
        const bool saved = !save_mean.is_none();
        if (saved) {
          if (!train) value_error("save_mean and save_invstd apply to training=True only");
          for (auto& [name, obj] : {std::pair<const char*, py::object>{"save_mean", save_mean},
                                    std::pair<const char*, py::object>{"save_invstd", save_invstd}}) {
            if (float_dtype(obj, name) != Dtype::f64)
              type_error(std::string(name) + " must have dtype float64 (as returned by "
                         "batch_norm(..., return_stats=True)), got " +
                         std::string(py::str(py::reinterpret_borrow<py::array>(obj).dtype())));
            bn_check_vec(obj, name, p.c);
          }
        }
        return dispatch_float(dt, [&](auto tag) -> py::tuple {
          using T = decltype(tag);
          auto x = contiguous<T>(input);
          auto dy = contiguous<T>(grad_output);
          auto dx = new_array<T>(shape);
          std::vector<double> w = bn_values<T>(weight);
          std::vector<double> rm, rv, sinv;
          if (!train) {
            rm = bn_values<T>(running_mean);
            rv = bn_values<T>(running_var);
          } else if (saved) {
            rm = bn_values<double>(save_mean);
            sinv = bn_values<double>(save_invstd);
          }
          const bool grads = !weight.is_none();
          std::vector<double> gw(grads ? static_cast<std::size_t>(p.c) : 0), gb(gw.size());
          {
            py::gil_scoped_release nogil;
            pyconv::batchnorm_backward<T>(dy.data(), x.data(), dx.mutable_data(), p, train,
                                          rm.empty() ? nullptr : rm.data(),
                                          rv.empty() ? nullptr : rv.data(),
                                          sinv.empty() ? nullptr : sinv.data(),
                                          grads ? w.data() : nullptr, grads ? gw.data() : nullptr,
                                          grads ? gb.data() : nullptr);
          }
          if (!grads) return py::make_tuple(dx, py::none(), py::none());
          py::array_t<T> gwa(static_cast<py::ssize_t>(p.c)), gba(static_cast<py::ssize_t>(p.c));
          for (i64 c = 0; c < p.c; ++c) {
            gwa.mutable_data()[c] = static_cast<T>(gw[c]);
            gba.mutable_data()[c] = static_cast<T>(gb[c]);
          }
          return py::make_tuple(dx, gwa, gba);
        });
      },
      py::arg("grad_output"), py::arg("input"), py::arg("weight"), py::arg("running_mean"),
      py::arg("running_var"), py::arg("training"), py::arg("eps"), py::arg("save_mean") = py::none(),
      py::arg("save_invstd") = py::none(),
      "Batch norm backward -> (grad_input, grad_weight, grad_bias); the last two are None\n"
      "when weight is None. Training recomputes the batch statistics from input, or uses\n"
      "save_mean / save_invstd (float64) from batch_norm(..., return_stats=True).");
}

// ========================== end batchnorm =========================

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyconv C++ kernels";
  register_common(m);
  register_gemm(m);
  register_conv(m);
  register_pool(m);
  register_batchnorm(m);
}
