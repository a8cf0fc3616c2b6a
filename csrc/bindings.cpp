// pybind11 bindings: array conversion, validation, allocation, GIL release and dispatch.
// Nothing else lives here; the kernels are in the op files. Every entry point validates
// its arguments itself (callers may reach pyconv._core directly), before the GIL is
// released. Errors: ValueError (shapes, parameter values), TypeError (dtypes,
// non-arrays), IndexError (indices), OverflowError (sizes that overflow int64).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
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

void register_gemm(py::module_& m) {
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
    long long t = threads.cast<long long>();
    double s = seconds.cast<double>();
    if (t < 1 || t > 4096) value_error("_fma_peak_gflops: threads must be in [1, 4096], got " + std::to_string(t));
    if (!(s > 0.0 && s <= 60.0)) value_error("_fma_peak_gflops: seconds must be in (0, 60], got " + std::to_string(s));
    py::gil_scoped_release release;
    return pyconv::fma_peak_gflops(static_cast<int>(t), s);
  }, py::arg("threads"), py::arg("seconds"),
  "FP32 FMA peak of this machine in GFLOP/s (12 independent 256-bit FMA chains per thread; "
  "a portable multiply-add loop on CPUs without AVX2).");
}

// ============================ end gemm ============================

// ============================== conv ==============================

void register_conv(py::module_& m) { (void)m; }

// ============================ end conv ============================

// ============================== pool ==============================

void register_pool(py::module_& m) { (void)m; }

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
