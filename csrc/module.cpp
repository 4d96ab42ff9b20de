// The Python module cnnext._C. Importing it loads this library, which runs the TORCH_LIBRARY
// registrations (the operators are reached through torch.ops.cnnext). Its only Python function,
// build_info(), says what this binary was built with and which CPU loop build it runs;
// cpu_variants() lists the CPU kernel variants with their call counts (cpu_variants.h);
// fma_peak() measures the CPU's float32 arithmetic peak (fma_peak/fma_peak.h); cpu_output_cache(),
// set_cpu_output_cache_limit() and empty_cpu_output_cache() show and bound the reused memory of
// large CPU outputs (cpu_output_memory.h). Plain CPython API: no pybind11 needed.
#include <Python.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <exception>
#include <string>

#include "common.h"
#include "cpu_cache.h"
#include "cpu_isa.h"
#include "cpu_output_memory.h"
#include "cpu_variants.h"
#include "fma_peak/fma_peak.h"

#ifdef CNNEXT_WITH_CUDA
#include "build_info.h"
#endif

namespace {

// Sets a Python exception from a C++ one: a c10::Error's message without its C++ backtrace.
void set_error(PyObject* type, const std::exception& e) {
  const auto* error = dynamic_cast<const c10::Error*>(&e);
  PyErr_SetString(type, error != nullptr ? error->what_without_backtrace() : e.what());
}

// dict[key] = value, dropping the reference to value; false (Python error set) on failure.
bool set_item(PyObject* dict, const char* key, PyObject* value) {
  if (value == nullptr) return false;
  const bool ok = PyDict_SetItemString(dict, key, value) == 0;
  Py_DECREF(value);
  return ok;
}

PyObject* build_info(PyObject*, PyObject*) {
  const char* cpu_isa = nullptr;
  int64_t l2_bytes = 0;
  try {
    cpu_isa = cnnext::cpu_isa_name(cnnext::cpu_isa());  // raises on a bad CNNEXT_CPU_ISA
    l2_bytes = cnnext::cpu_l2_cache_bytes();            // raises on a bad CNNEXT_L2_CACHE_BYTES
  } catch (const std::exception& e) {
    set_error(PyExc_RuntimeError, e);
    return nullptr;
  }
  const std::string torch_version = std::to_string(TORCH_VERSION_MAJOR) + "." +
                                    std::to_string(TORCH_VERSION_MINOR) + "." +
                                    std::to_string(TORCH_VERSION_PATCH);
#ifdef CNNEXT_WITH_CUDA
  const bool cuda = true;
  const std::string archs = cnnext::cuda_arch_list();
  const auto cuda_version = [] { return PyLong_FromLong(cnnext::cuda_runtime_version()); };
#else
  const bool cuda = false;
  const std::string archs;
  const auto cuda_version = [] { return Py_NewRef(Py_None); };
#endif
  PyObject* info = PyDict_New();
  if (info == nullptr) return nullptr;
  const bool ok = set_item(info, "cuda", PyBool_FromLong(cuda)) &&
                  set_item(info, "cuda_archs", PyUnicode_FromString(archs.c_str())) &&
                  set_item(info, "cuda_runtime_version", cuda_version()) &&
                  set_item(info, "torch_version", PyUnicode_FromString(torch_version.c_str())) &&
                  set_item(info, "cpu_isa", PyUnicode_FromString(cpu_isa)) &&
                  set_item(info, "cpu_isa_supported",
                           PyUnicode_FromString(cnnext::cpu_isa_name(cnnext::cpu_isa_supported()))) &&
                  set_item(info, "l2_cache_bytes", PyLong_FromLongLong(l2_bytes)) &&
                  set_item(info, "huge_page_advice", PyBool_FromLong(cnnext::huge_page_advice_enabled()));
  if (!ok) {
    Py_DECREF(info);
    return nullptr;
  }
  return info;
}

// [(op, name, when, calls), ...], every op's table in order.
PyObject* cpu_variants(PyObject*, PyObject*) {
  const auto variants = cnnext::all_cpu_variants();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(variants.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < variants.size(); ++i) {
    const cnnext::CpuVariant& v = *variants[i];
    PyObject* entry = Py_BuildValue("(sssL)", v.op, v.name, v.when,
                                    static_cast<long long>(v.calls.load(std::memory_order_relaxed)));
    if (entry == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), entry);
  }
  return list;
}

struct ReleaseGil {
  PyThreadState* state = PyEval_SaveThread();
  ~ReleaseGil() { PyEval_RestoreThread(state); }
};

// fma_peak(isa=None, trials=5, trial_seconds=0.05) -> {"gflops", "threads", "isa", "vector_floats",
// "chains"}; isa None: the build cpu_isa() runs.
PyObject* fma_peak(PyObject*, PyObject* args, PyObject* kwargs) {
  const char* isa_name = nullptr;
  int trials = 5;
  double trial_seconds = 0.05;
  static const char* keywords[] = {"isa", "trials", "trial_seconds", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|zid", const_cast<char**>(keywords), &isa_name, &trials,
                                   &trial_seconds)) {
    return nullptr;
  }
  cnnext::FmaPeak peak;
  try {
    const cnnext::CpuIsa isa =
        isa_name == nullptr ? cnnext::cpu_isa() : cnnext::cpu_isa_from_name(isa_name, "fma_peak: isa");
    ReleaseGil unlocked;  // other Python threads run meanwhile; held again before any error is set
    peak = cnnext::measure_fma_peak(isa, trials, trial_seconds);
  } catch (const std::exception& e) {
    set_error(PyExc_ValueError, e);
    return nullptr;
  }
  return Py_BuildValue("{s:d,s:i,s:s,s:i,s:i}", "gflops", peak.gflops, "threads", peak.threads, "isa",
                       cnnext::cpu_isa_name(peak.isa), "vector_floats", peak.vector_floats, "chains",
                       peak.chains);
}

// cpu_output_cache() -> {"cached_bytes", "limit_bytes", "reused", "fresh"} (cpu_output_memory.h).
PyObject* cpu_output_cache(PyObject*, PyObject*) {
  cnnext::CpuOutputCacheStats s{};
  try {
    s = cnnext::cpu_output_cache_stats();  // raises on a bad CNNEXT_CPU_CACHE_MB
  } catch (const std::exception& e) {
    set_error(PyExc_RuntimeError, e);
    return nullptr;
  }
  return Py_BuildValue("{s:L,s:L,s:L,s:L}", "cached_bytes", static_cast<long long>(s.cached_bytes),
                       "limit_bytes", static_cast<long long>(s.limit_bytes), "reused",
                       static_cast<long long>(s.reused), "fresh", static_cast<long long>(s.fresh));
}

// set_cpu_output_cache_limit(bytes): keeps at most `bytes` of freed blocks from now on.
PyObject* set_cpu_output_cache_limit(PyObject*, PyObject* arg) {
  const long long bytes = PyLong_AsLongLong(arg);
  if (bytes == -1 && PyErr_Occurred()) return nullptr;
  try {
    cnnext::set_cpu_output_cache_limit(bytes);
  } catch (const std::exception& e) {
    set_error(PyExc_ValueError, e);
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* empty_cpu_output_cache(PyObject*, PyObject*) {
  try {
    cnnext::empty_cpu_output_cache();
  } catch (const std::exception& e) {
    set_error(PyExc_RuntimeError, e);
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "What this extension was compiled with."},
    {"cpu_variants", cpu_variants, METH_NOARGS, "The CPU kernel variants and their call counts."},
    {"fma_peak", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fma_peak)),
     METH_VARARGS | METH_KEYWORDS, "The CPU's measured float32 multiply-add peak (GFLOP/s)."},
    {"cpu_output_cache", cpu_output_cache, METH_NOARGS, "What the reused CPU output memory holds."},
    {"set_cpu_output_cache_limit", set_cpu_output_cache_limit, METH_O,
     "Keep at most this many bytes of freed CPU output blocks."},
    {"empty_cpu_output_cache", empty_cpu_output_cache, METH_NOARGS, "Free every kept CPU output block."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "cnnext compiled operators", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
