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
