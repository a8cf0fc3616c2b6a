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

void register_conv(py::module_& m) { (void)m; }

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
        Dtype dt = float_dtype(grad_output, "grad_output");
        require_ndim(grad_output, "grad_output", {4});
        std::vector<i64> s = shape_of(grad_output);
        pool_require_indices(indices, "indices", s);
        i64 H = pool_int_arg(in_h, "input height"), W = pool_int_arg(in_w, "input width");
        if (H < 1 || W < 1)
          value_error("input_shape: spatial sizes must be >= 1, got (" + std::to_string(H) + ", " +
                      std::to_string(W) + ")");
        i64 planes = pyconv::checked_mul(s[0], s[1], "batch*channels");
        i64 src_plane = pyconv::checked_mul(s[2], s[3], "grad_output plane");
        i64 dst_plane = pyconv::checked_mul(H, W, "input plane");
        return dispatch_float(dt, [&](auto tag) -> py::object {
          using T = decltype(tag);
          auto go = contiguous<T>(grad_output);
          auto ic = contiguous<int64_t>(indices);
          auto gi = new_array<T>({s[0], s[1], H, W});
          const T* gp = go.data();
          const i64* ip = ic.data();
          T* op = gi.mutable_data();
          i64 bad;
          {
            py::gil_scoped_release release;
            bad = pyconv::max_pool_backward(planes, src_plane, dst_plane, gp, ip, op);
          }
          if (bad >= 0) pool_index_error(s, ip, bad, dst_plane, "an input plane of input_shape's H*W elements");
          return gi;
        });
      },
      py::arg("grad_output"), py::arg("indices"), py::arg("in_h"), py::arg("in_w"),
      "Scatter-add grad_output through indices into a zero (N, C, in_h, in_w) grad_input.");

  // input / indices (N, C, H, W) -> output (N, C, out_h, out_w).
  m.def(
      "max_unpool2d",
      [](py::object x, py::object indices, py::object out_h, py::object out_w) {
        Dtype dt = float_dtype(x, "input");
        require_ndim(x, "input", {4});
        std::vector<i64> s = shape_of(x);
        pool_require_indices(indices, "indices", s);
        i64 H = pool_int_arg(out_h, "output height"), W = pool_int_arg(out_w, "output width");
        if (H < 1 || W < 1)
          value_error("output_size: spatial sizes must be >= 1, got (" + std::to_string(H) + ", " +
                      std::to_string(W) + ")");
        i64 planes = pyconv::checked_mul(s[0], s[1], "batch*channels");
        i64 src_plane = pyconv::checked_mul(s[2], s[3], "input plane");
        i64 dst_plane = pyconv::checked_mul(H, W, "output plane");
        return dispatch_float(dt, [&](auto tag) -> py::object {
          using T = decltype(tag);
          auto xc = contiguous<T>(x);
          auto ic = contiguous<int64_t>(indices);
          auto out = new_array<T>({s[0], s[1], H, W});
          const T* xp = xc.data();
          const i64* ip = ic.data();
          T* op = out.mutable_data();
          i64 bad;
          {
            py::gil_scoped_release release;
            bad = pyconv::max_unpool(planes, src_plane, dst_plane, xp, ip, op);
          }
          if (bad >= 0) pool_index_error(s, ip, bad, dst_plane, "an output plane of H*W elements");
          return out;
        });
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
