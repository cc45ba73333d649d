// What the bindings of the two steps share (bind_host_step.cpp, bind_device_step.cpp):
// the stream and tensor arguments, and the calls that both steps answer alike. Arguments
// are read as in bindings.cpp (py_args.h); a step call holds its books' busy flag, so
// that nothing an argument runs can change them meanwhile.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <utility>

#include "bindings.h"
#include "py_args.h"
#include "step.h"

inline cuda::Stream read_stream(const char* op, py::handle stream) {
  return reinterpret_cast<cuda::Stream>(static_cast<uintptr_t>(read_int(op, "stream", stream)));
}

// Which thread is inside a step's native calls, or inside a read that spans several native
// calls (`read`), so that another thread's reads see no call half done (BlockManager's
// docstring, Threads). Every change a step makes happens with the GIL held, but a call
// runs Python inside it (its grow, its launcher: a torch kernel lets the GIL go), and a
// read of several native calls can be cut between two of them. Held by the native part of
// a call that changes the step or the device tables (after its arguments are read: an
// argument's __index__ still runs outside it) and by such a read. A thread that finds it
// held by another waits, the GIL released, polling; the thread that holds it nests. A
// read from inside its own thread's call (only a signal handler, or a finalizer, can run
// there) is refused: what it would read is half changed. Every field is read and written
// with the GIL held.
struct Region {
  unsigned long owner = 0;  // PyThread_get_thread_ident() of the holder
  int depth = 0;
  bool reading = false;  // held by a read
};

class RegionScope {
 public:
  enum Kind { kCall, kRead };
  RegionScope(const char* op, Region& region, Kind kind);
  ~RegionScope();
  RegionScope(const RegionScope&) = delete;
  RegionScope& operator=(const RegionScope&) = delete;

 private:
  Region& region_;
};

// Where a tensor that a step keeps must live: on the host (a ring buffer, pinned on CUDA)
// or on the step's device (torch's CPU device, or the CUDA device).
enum class Place { kHost, kDevice };

// The memory of a tensor a step keeps.
struct TensorMemory {
  uint8_t* data;
  int64_t nbytes;
};

// `tensor`'s memory: a contiguous torch.Tensor on `place` (a step `on_cuda` or not);
// TypeError or ValueError naming `name` otherwise.
TensorMemory tensor_memory(const char* op, const char* name, py::handle tensor, bool on_cuda,
                           Place place);

// A device index: -1 (torch's CPU device) or a CUDA device's.
int read_device(const char* op, py::handle device);

// The pack's answer; a new pack's stats carry `buffer`, the metadata buffer's object.
py::object pack_result(const PackOutcome& o, int64_t batch_size, py::handle buffer);

// The first-layer plan and the later-layer lengths, as both steps read them.
template <class S>
py::list plan_of(S& s, py::handle req_ids, py::handle num_prefill, py::handle lens) {
  const char* op = "update_block_table";
  BusyScope busy(op, s.busy());
  Batch batch(op, req_ids, num_prefill, lens);
  BatchView b = batch.view();
  return to_list(step_of(s).plan(op, b), b.size);
}

template <class S>
py::list lengths_of(S& s, py::handle req_ids, py::handle num_prefill, py::handle lens) {
  const char* op = "update_block_table";
  BusyScope busy(op, s.busy());
  Batch batch(op, req_ids, num_prefill, lens);
  BatchView b = batch.view();
  return to_list(step_of(s).lengths(op, b), b.size);
}

template <class S>
py::object pack_of(S& s, py::handle req_ids, py::handle num_prefill, py::handle lens,
                   py::handle layer, py::handle stream, py::handle known) {
  const char* op = "pack_flash_attn_metadata";
  BusyScope busy(op, s.busy());
  Batch batch(op, req_ids, num_prefill, lens);
  int64_t at_layer = read_int(op, "layer", layer);
  cuda::Stream st = read_stream(op, stream);
  int64_t known_id = read_int(op, "known", known);
  BatchView b = batch.view();
  RegionScope region(op, s.region, RegionScope::kCall);
  return pack_result(step_of(s).pack(op, b, at_layer, st, known_id), b.size, s.out);
}

// The step's grow (step.h, Grow): `fn`, kept alive by the Python-side step.
template <class S>
void set_grow_of(S& s, py::object fn) {
  s.grow = std::move(fn);
  step_of(s).set_grow([&s](const char* which, int64_t nbytes) { s.grow(which, nbytes); });
}

// fn() inside the step's region, as one read (Region).
template <class S>
py::object read_of(S& s, py::handle fn) {
  RegionScope region("read", s.region, RegionScope::kRead);
  return py::reinterpret_borrow<py::object>(fn)();
}

extern const char* const kPlanDoc;
extern const char* const kLengthsDoc;
extern const char* const kPackDoc;
extern const char* const kSetGrowDoc;
extern const char* const kReadDoc;

// _C.HostStep (bind_host_step.cpp) and _C.DeviceStep (bind_device_step.cpp).
void bind_host_step(py::module_& m);
void bind_device_step(py::module_& m);
