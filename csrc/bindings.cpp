// pybind11 bindings: array conversion, validation, allocation, GIL release and dispatch.
// Nothing else lives here; the kernels are in the op files. Every entry point validates
// its arguments itself (callers may reach pyconv._core directly), before the GIL is
// released. Errors: ValueError (shapes, parameter values), TypeError (dtypes,
// non-arrays), IndexError (indices), OverflowError (sizes that overflow int64).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

// A new C-contiguous array of T; the element count is overflow-checked first.
template <typename T>
py::array_t<T> new_array(const std::vector<i64>& shape) {
  i64 count = 1;
  for (i64 d : shape) {
    if (d < 0) value_error("negative dimension in output shape");
    count = pyconv::checked_mul(count, d, "output");
  }
  pyconv::checked_mul(count, static_cast<i64>(sizeof(T)), "output bytes");
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  return py::array_t<T>(s);
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
    long long v = n.cast<long long>();
    if (v < 1 || v > 4096) value_error("set_num_threads: n must be in [1, 4096], got " + std::to_string(v));
    pyconv::set_num_threads(static_cast<int>(v));
  });
  m.def("get_num_threads", []() { return pyconv::num_threads(); });
  m.def("_set_isa", [](const std::string& name) {
    try {
      pyconv::set_active_isa(name);
    } catch (const std::invalid_argument& e) {
      value_error(e.what());
    }
  }, "Test hook: force the kernel ISA ('scalar', 'avx2') for this process.");
}

// ============================== gemm ==============================
// (section owned by the GEMM work; the op sections below call no code from here)

void register_gemm(py::module_& m) { (void)m; }

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
    value_error(std::string("path '") + path + "' does not support these convolution parameters");
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

void register_pool(py::module_& m) { (void)m; }

// ============================ end pool ============================

// ============================ batchnorm ===========================

void register_batchnorm(py::module_& m) { (void)m; }

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
