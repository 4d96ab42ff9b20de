// The Python module cnnext._C. Importing it loads this library, which runs the TORCH_LIBRARY
// registrations (the operators are reached through torch.ops.cnnext). Its only Python function,
// build_info(), says what this binary was built with and which CPU loop build it runs. Plain CPython API: no pybind11 needed.
#include <Python.h>
#include <torch/version.h>

#include <exception>
#include <string>

#include "common.h"
#include "cpu_isa.h"

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

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "What this extension was compiled with."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "cnnext compiled operators", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
