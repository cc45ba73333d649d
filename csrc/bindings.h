// What the binding files share: the Python-side objects of the core's classes (with
// the flag that refuses overlapping calls), and the BatchStats type.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "block_books.h"

namespace py = pybind11;
using namespace disagmoe;

struct PyRequestTable : RequestTable {
  using RequestTable::RequestTable;
  bool busy = false;
};

struct PyBlockBooks : BlockBooks {
  using BlockBooks::BlockBooks;
  bool busy = false;
};

// One call that may change an object; refuses to start while another is under way.
class BusyScope {
 public:
  BusyScope(const char* op, bool& busy) : busy_(busy) {
    if (busy_)
      throw std::runtime_error(std::string(op) +
                               ": another call on this object is under way (calls on one "
                               "manager must not overlap: re-entered or from two threads)");
    busy_ = true;
  }
  ~BusyScope() { busy_ = false; }
  BusyScope(const BusyScope&) = delete;
  BusyScope& operator=(const BusyScope&) = delete;

 private:
  bool& busy_;
};

// A _C.BatchStats of `s`; its `buffer` is `buffer` (a pack's: the step's metadata buffer).
py::object stats_object(const BatchStats& s, py::handle buffer = py::none());

// The step paths (bind_step.cpp, bind_host_step.cpp, bind_device_step.cpp): _C.HostStep,
// _C.DeviceStep, _C.BlockSource, _C.Guard, the CUDA graphs.
void bind_step(py::module_& m);
