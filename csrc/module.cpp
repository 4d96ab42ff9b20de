// The Python module cnnext._C. Importing it loads this library, which runs the TORCH_LIBRARY
// registrations (the operators are reached through torch.ops.cnnext). Its only Python function,
// build_info(), says what this binary was built with and which CPU loop build it runs;
// cpu_variants() lists the CPU kernel variants with their call counts (cpu_variants.h). Plain
// CPython API: no pybind11 needed.
#include <Python.h>
#include <torch/version.h>

#include <exception>
#include <string>

#include "common.h"
#include "cpu_isa.h"
#include "cpu_variants.h"

#ifdef CNNEXT_WITH_CUDA
#include "build_info.h"
#endif

namespace {

PyObject* build_info(PyObject*, PyObject*) {
  const char* cpu_isa = nullptr;
  try {
    cpu_isa = cnnext::cpu_isa_name(cnnext::cpu_isa());  // raises on a bad CNNEXT_CPU_ISA
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  const char* cpu_isa_supported = cnnext::cpu_isa_name(cnnext::cpu_isa_supported());
  PyObject* huge_pages = cnnext::huge_page_advice_enabled() ? Py_True : Py_False;
  const std::string torch_version = std::to_string(TORCH_VERSION_MAJOR) + "." +
                                    std::to_string(TORCH_VERSION_MINOR) + "." +
                                    std::to_string(TORCH_VERSION_PATCH);
#ifdef CNNEXT_WITH_CUDA
  const std::string archs = cnnext::cuda_arch_list();
  const int cuda_version = cnnext::cuda_runtime_version();
  return Py_BuildValue("{s:O,s:s,s:i,s:s,s:s,s:s,s:O}", "cuda", Py_True, "cuda_archs", archs.c_str(),
                       "cuda_runtime_version", cuda_version, "torch_version", torch_version.c_str(), "cpu_isa",
                       cpu_isa, "cpu_isa_supported", cpu_isa_supported, "huge_page_advice", huge_pages);
#else
  return Py_BuildValue("{s:O,s:s,s:O,s:s,s:s,s:s,s:O}", "cuda", Py_False, "cuda_archs", "", "cuda_runtime_version",
                       Py_None, "torch_version", torch_version.c_str(), "cpu_isa", cpu_isa, "cpu_isa_supported",
                       cpu_isa_supported, "huge_page_advice", huge_pages);
#endif
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

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "What this extension was compiled with."},
    {"cpu_variants", cpu_variants, METH_NOARGS, "The CPU kernel variants and their call counts."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "cnnext compiled operators", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
