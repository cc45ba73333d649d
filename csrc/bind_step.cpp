// Bindings of what the two steps share (bind_host_step.cpp, bind_device_step.cpp hold the
// steps): the staged words and limits, the CUDA graphs a device step replays, and the
// guard every manager call holds.
#include "bind_step.h"

#include <pybind11/pybind11.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "device_step.h"
#include "sizes.h"

TensorMemory tensor_memory(const char* op, const char* name, py::handle tensor, bool on_cuda,
                           Place place) {
  // (the repr only for an error: a tensor's runs Python, as much as a step's host time)
  auto what = [&] { return std::string(op) + ": " + name + "=" + safe_repr(tensor); };
  if (!py::isinstance(tensor, py::module_::import("torch").attr("Tensor")))
    throw py::type_error(what() + " is not a torch.Tensor");
  std::string want = place == Place::kDevice && on_cuda ? "cuda" : "cpu";
  std::string device = py::str(tensor.attr("device").attr("type"));
  if (device != want) throw py::value_error(what() + " is on " + device + ", not on " + want);
  if (!tensor.attr("is_contiguous")().cast<bool>())
    throw py::value_error(what() + " is not contiguous");
  auto address = static_cast<uintptr_t>(tensor.attr("data_ptr")().cast<int64_t>());
  return {reinterpret_cast<uint8_t*>(address), tensor.attr("nbytes").cast<int64_t>()};
}

int read_device(const char* op, py::handle device) {
  int64_t d = read_int(op, "device", device);
  check_range(op, "device", d, -1, kMaxInt32);
  return static_cast<int>(d);
}

RegionScope::RegionScope(const char* op, Region& region, Kind kind) : region_(region) {
  unsigned long me = PyThread_get_thread_ident();
  while (region.depth > 0 && region.owner != me) {
    {
      py::gil_scoped_release released;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();  // (a wait a signal stops)
  }
  if (kind == kRead && region.depth > 0 && !region.reading)
    throw std::runtime_error(std::string(op) +
                             ": a read from inside a call on this manager in the same thread "
                             "(a signal handler?) while the call changes what it would read");
  if (region.depth == 0) {
    region.owner = me;
    region.reading = kind == kRead;
  }
  ++region.depth;
}

RegionScope::~RegionScope() {
  if (--region_.depth == 0) {
    region_.owner = 0;
    region_.reading = false;
  }
}

py::object pack_result(const PackOutcome& o, int64_t batch_size, py::handle buffer) {
  if (o.hit) return py::make_tuple(o.pack_id, to_list(o.seq_lens, batch_size));
  return py::make_tuple(o.pack_id, stats_object(o.stats, buffer), to_list(o.seq_lens, batch_size));
}

const char* const kPlanDoc =
    "First layer: checks the batch and returns its lengths after the update, changing\n"
    "nothing; commit() makes the update.";
const char* const kLengthsDoc = "Any later layer: the batch's lengths.";
const char* const kPackDoc =
    "The pack of a batch at `layer`: (the last pack's id, lengths) when it is the batch of\n"
    "that pack, which the caller remembers (`known`: its id), at another layer with\n"
    "nothing changed since; else (pack id, BatchStats, lengths) once the metadata is\n"
    "sent on `stream`. A buffer too small for it is grown in the call, by the step's\n"
    "grow (the batch is read once).";
const char* const kReadDoc =
    "fn(): its result, read inside the step's region: no other thread's call on the step\n"
    "runs meanwhile (a thread's call under way is waited for). RuntimeError from inside a\n"
    "call on the step in the same thread (a signal handler).";
const char* const kSetGrowDoc =
    "grow(which, nbytes): replaces the buffers `which` names, too small for a call, with\n"
    "ones of nbytes at least: 'host' (set_buffer), 'device' (the metadata buffer),\n"
    "'staging' (the device step's ring buffers and twin).";

namespace {

// _C.Guard: a flag a manager holds for the length of each public call (`with guard:`).
// A second call that starts while it is held (re-entered from inside the call, or from
// another thread) is refused with RuntimeError. A C type: entering and leaving cost two
// C calls, and no Python code runs between the flag's test and its setting. A guard
// told to refuse (`refuse(message)`: a manager that cannot run in this process, after a
// fork) refuses every call from then on with that message, at no cost to the others.
struct PyGuard {
  PyObject ob_base;
  int state;          // kFree, kBusy or kRefused
  PyObject* refusal;  // the message of kRefused, else NULL
};
constexpr int kFree = 0, kBusy = 1, kRefused = 2;

PyObject* guard_enter(PyObject* self, PyObject*) {
  auto* g = reinterpret_cast<PyGuard*>(self);
  if (g->state != kFree) {
    if (g->state == kRefused)
      PyErr_SetObject(PyExc_RuntimeError, g->refusal);
    else
      PyErr_SetString(PyExc_RuntimeError,
                      "another call on this manager is under way (calls on one manager must "
                      "not overlap: re-entered from inside a call, or made from two threads at "
                      "once)");
    return nullptr;
  }
  g->state = kBusy;
  Py_RETURN_NONE;
}

PyObject* guard_exit(PyObject* self, PyObject* const*, Py_ssize_t) {
  auto* g = reinterpret_cast<PyGuard*>(self);
  if (g->state == kBusy) g->state = kFree;
  Py_RETURN_FALSE;
}

PyObject* guard_refuse(PyObject* self, PyObject* message) {
  if (!PyUnicode_Check(message)) {
    PyErr_SetString(PyExc_TypeError, "Guard.refuse: the message must be a str");
    return nullptr;
  }
  auto* g = reinterpret_cast<PyGuard*>(self);
  Py_INCREF(message);
  PyObject* before = g->refusal;
  g->refusal = message;
  g->state = kRefused;
  Py_XDECREF(before);
  Py_RETURN_NONE;
}

PyObject* guard_refusal(PyObject* self, void*) {
  PyObject* refusal = reinterpret_cast<PyGuard*>(self)->refusal;
  return Py_NewRef(refusal ? refusal : Py_None);
}

PyObject* guard_new(PyTypeObject* type, PyObject*, PyObject*) {
  PyObject* self = type->tp_alloc(type, 0);
  if (self) {
    reinterpret_cast<PyGuard*>(self)->state = kFree;
    reinterpret_cast<PyGuard*>(self)->refusal = nullptr;
  }
  return self;
}

void guard_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  Py_CLEAR(reinterpret_cast<PyGuard*>(self)->refusal);
  type->tp_free(self);
  Py_DECREF(type);
}

PyMethodDef guard_methods[] = {
    {"__enter__", guard_enter, METH_NOARGS, "Holds the guard; RuntimeError if it is held."},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(guard_exit)),
     METH_FASTCALL, "Lets the guard go."},
    {"refuse", guard_refuse, METH_O,
     "refuse(self: disagmoe._C.Guard, message: str) -> None\n\nEvery call from now on raises "
     "RuntimeError(message)."},
    {nullptr, nullptr, 0, nullptr}};
PyGetSetDef guard_getset[] = {
    {"refusal", guard_refusal, nullptr, "The message refuse() was given, or None.", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};
PyType_Slot guard_slots[] = {
    {Py_tp_doc, const_cast<char*>("Refuses a call that overlaps another on the same manager.")},
    {Py_tp_new, reinterpret_cast<void*>(guard_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(guard_dealloc)},
    {Py_tp_methods, guard_methods},
    {Py_tp_getset, guard_getset},
    {0, nullptr}};
PyType_Spec guard_spec = {"disagmoe._C.Guard", sizeof(PyGuard), 0, Py_TPFLAGS_DEFAULT, guard_slots};

void bind_graphs(py::module_& m) {
  py::class_<cuda::GraphHandle, std::unique_ptr<cuda::GraphHandle>>(
      m, "CudaGraph",
      "An instantiated CUDA graph (end_capture makes one; a device step replays it).");
  m.def(
      "begin_capture",
      [](py::handle stream) { cuda::begin_capture(read_stream("begin_capture", stream)); },
      py::arg("stream"),
      "Starts capturing a (non-default) stream, relaxed: other threads go on meanwhile.");
  m.def(
      "end_capture",
      [](py::handle stream, py::handle keep) -> py::object {
        const char* op = "end_capture";
        cuda::GraphExec exec =
            cuda::end_capture(read_stream(op, stream), read_bool(op, "keep", keep));
        if (!exec) return py::none();
        return py::cast(std::make_unique<cuda::GraphHandle>(exec));
      },
      py::arg("stream"), py::arg("keep"),
      "Ends the capture of `stream`: the graph (a CudaGraph), or None when keep is False.");
}

}  // namespace

void bind_step(py::module_& m) {
  py::register_exception<cuda::CudaError>(m, "CudaError", PyExc_RuntimeError);
  py::object guard_type = py::reinterpret_steal<py::object>(PyType_FromSpec(&guard_spec));
  if (!guard_type) throw py::error_already_set();
  m.attr("Guard") = guard_type;
  py::dict words;
  for (auto [name, value] : {std::pair{"END", staged::END},
                             {"PACK_SIZE", staged::PACK_SIZE},
                             {"WIDTH", staged::WIDTH},
                             {"NUM_TOKENS", staged::NUM_TOKENS},
                             {"LOOKUP_AT", staged::LOOKUP_AT},
                             {"LOOKUP_STRIDE", staged::LOOKUP_STRIDE},
                             {"SLOTS_AT", staged::SLOTS_AT},
                             {"SEQ_LENS_AT", staged::SEQ_LENS_AT},
                             {"UPDATE_SIZE", staged::UPDATE_SIZE},
                             {"HEIGHT", staged::HEIGHT},
                             {"PLAN_AT", staged::PLAN_AT},
                             {"PLAN_STRIDE", staged::PLAN_STRIDE},
                             {"IDS_AT", staged::IDS_AT},
                             {"RELEASE_SIZE", staged::RELEASE_SIZE},
                             {"RELEASE_HEIGHT", staged::RELEASE_HEIGHT},
                             {"RELEASE_AT", staged::RELEASE_AT},
                             {"RELEASE_STRIDE", staged::RELEASE_STRIDE},
                             {"TABLE_AT", staged::TABLE_AT},
                             {"PRE_SIZE", staged::PRE_SIZE},
                             {"PRE_AT", staged::PRE_AT},
                             {"POST_SIZE", staged::POST_SIZE},
                             {"POST_AT", staged::POST_AT},
                             {"MOVE_WORDS", staged::MOVE_WORDS},
                             {"HEADER", staged::HEADER}})
    words[name] = value;
  m.attr("STAGED_WORDS") = words;
  m.attr("LAUNCH_FLAGS") =
      py::dict(py::arg("RELEASE") = kRelease, py::arg("UPDATE") = kUpdate, py::arg("PACK") = kPack,
               py::arg("FUSED") = kFused, py::arg("PREFIX") = kPrefix);
  py::enum_<BlockSource>(m, "BlockSource",
                         "Where the blocks a device step's update adds come from (device_step.h).")
      .value("DEVICE_STACK", BlockSource::kDeviceStack, "the device's free stack (gpu)")
      .value("HOST_BOOKS", BlockSource::kHostBooks, "the host's BlockBooks (hybrid)");
  m.attr("MAX_HOST_BYTES") = kMaxHostBytes;
  m.def(
      "staged_words",
      [](py::handle max_reqs, py::handle ids) {
        return staged::words(read_int("staged_words", "max_reqs", max_reqs),
                             read_int("staged_words", "ids", ids));
      },
      py::arg("max_reqs"), py::arg("ids"),
      "Words of a staging buffer with room for every region of max_reqs entries and `ids`\n"
      "block ids.");
  bind_host_step(m);
  bind_device_step(m);
  bind_graphs(m);
}
