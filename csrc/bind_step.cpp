// Bindings of the step paths (step.h), the CUDA graphs they replay, and the guard every
// manager call holds. Arguments are read as in bindings.cpp (py_args.h); a step call
// holds its books' busy flag, so that nothing an argument runs can change them meanwhile.
#include <pybind11/pybind11.h>  // (Python.h, before structmember.h)
#include <structmember.h>

#include <memory>
#include <utility>

#include "bindings.h"
#include "device_step.h"
#include "host_step.h"
#include "py_args.h"
#include "sizes.h"

namespace {

cuda::Stream read_stream(const char* op, py::handle stream) {
  return reinterpret_cast<cuda::Stream>(static_cast<uintptr_t>(read_int(op, "stream", stream)));
}

int64_t tensor_ptr(py::handle tensor) { return tensor.attr("data_ptr")().cast<int64_t>(); }
int64_t tensor_bytes(py::handle tensor) { return tensor.attr("nbytes").cast<int64_t>(); }

py::object pack_result(const PackOutcome& o, int64_t batch_size) {
  if (o.hit) return py::make_tuple(o.pack_id, to_list(o.seq_lens, batch_size));
  return py::make_tuple(o.pack_id, stats_object(o.stats), to_list(o.seq_lens, batch_size));
}

// The Python-side steps: the core objects they step (kept alive), the tensors whose
// memory they stage into and send to (kept alive until the device has read them).
struct PyHostStep {
  py::object core_ref;
  HostStep step;
  std::vector<py::object> held;  // per buffer: table and head; then the out buffer

  PyHostStep(py::object core, int64_t depth, int device)
      : core_ref(std::move(core)),
        step(core_ref.cast<PyBlockBooks&>(), depth, device),
        held(2 * step.depth() + 1) {}
  ~PyHostStep() {
    try {
      step.wait_all();
    } catch (...) {  // the device is gone (interpreter exit): nothing in flight to wait for
    }
  }
  bool& busy() { return core_ref.cast<PyBlockBooks&>().busy; }
};

struct PyDeviceStep {
  py::object books_ref;  // a _C.RequestTable (gpu) or a _C.BlockBooks (hybrid)
  std::unique_ptr<DeviceStep> step;
  bool* busy_flag;
  std::vector<py::object> held;    // per buffer; then the twin
  std::vector<py::object> graphs;  // the CudaGraph objects set_graph was given
  py::object launcher;
  py::object stacks;

  ~PyDeviceStep() {
    try {
      if (step) step->wait_all();
    } catch (...) {
    }
  }
  bool& busy() { return *busy_flag; }
};

// _C.Guard: a flag a manager holds for the length of each public call (`with guard:`).
// A second call that starts while it is held (re-entered from inside the call, or from
// another thread) is refused with RuntimeError. A C type: entering and leaving cost two
// C calls, and no Python code runs between the flag's test and its setting.
struct PyGuard {
  PyObject ob_base;
  int busy;
};

PyObject* guard_enter(PyObject* self, PyObject*) {
  auto* g = reinterpret_cast<PyGuard*>(self);
  if (g->busy) {
    PyErr_SetString(PyExc_RuntimeError,
                    "another call on this manager is under way (calls on one manager must not "
                    "overlap: re-entered from inside a call, or made from two threads at once)");
    return nullptr;
  }
  g->busy = 1;
  Py_RETURN_NONE;
}

PyObject* guard_exit(PyObject* self, PyObject* const*, Py_ssize_t) {
  reinterpret_cast<PyGuard*>(self)->busy = 0;
  Py_RETURN_FALSE;
}

PyObject* guard_new(PyTypeObject* type, PyObject*, PyObject*) {
  PyObject* self = type->tp_alloc(type, 0);
  if (self) reinterpret_cast<PyGuard*>(self)->busy = 0;
  return self;
}

PyMethodDef guard_methods[] = {
    {"__enter__", guard_enter, METH_NOARGS, "Holds the guard; RuntimeError if it is held."},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(guard_exit)),
     METH_FASTCALL, "Lets the guard go."},
    {nullptr, nullptr, 0, nullptr}};
PyMemberDef guard_members[] = {
    {"busy", T_INT, offsetof(PyGuard, busy), READONLY, "1 while a call holds the guard"},
    {nullptr, 0, 0, 0, nullptr}};
PyType_Slot guard_slots[] = {
    {Py_tp_doc, const_cast<char*>("Refuses a call that overlaps another on the same manager.")},
    {Py_tp_new, reinterpret_cast<void*>(guard_new)},
    {Py_tp_methods, guard_methods},
    {Py_tp_members, guard_members},
    {0, nullptr}};
PyType_Spec guard_spec = {"disagmoe._C.Guard", sizeof(PyGuard), 0, Py_TPFLAGS_DEFAULT, guard_slots};

HostStep& step_of(PyHostStep& s) { return s.step; }
DeviceStep& step_of(PyDeviceStep& s) { return *s.step; }

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
                   py::handle layer, py::handle stream, py::handle known, py::handle grow) {
  const char* op = "pack_flash_attn_metadata";
  BusyScope busy(op, s.busy());
  Batch batch(op, req_ids, num_prefill, lens);
  int64_t at_layer = read_int(op, "layer", layer);
  cuda::Stream st = read_stream(op, stream);
  int64_t known_id = read_int(op, "known", known);
  BatchView b = batch.view();
  Grow grow_fn = [grow](const char* which, int64_t nbytes) {
    if (grow.is_none())
      throw std::runtime_error("pack: a buffer must grow and no grow() was given");
    grow(which, nbytes);
  };
  return pack_result(step_of(s).pack(op, b, at_layer, st, known_id, grow_fn), b.size);
}

const char* kPlanDoc =
    "First layer: checks the batch and returns its lengths after the update, changing\n"
    "nothing; commit() makes the update.";
const char* kLengthsDoc = "Any later layer: the batch's lengths.";
const char* kPackDoc =
    "The pack of a batch at `layer`: (the last pack's id, lengths) when it is the batch of\n"
    "that pack, which the caller remembers (`known`: its id), at another layer with\n"
    "nothing changed since; else (pack id, BatchStats, lengths) once the metadata is\n"
    "sent on `stream`. A buffer too small for it is grown in the call, by\n"
    "grow('host' | 'device', nbytes) (the batch is read once).";

void bind_host_step(py::module_& m) {
  py::class_<PyHostStep>(m, "HostStep", "The cpu design's step path (step.h).")
      .def(py::init([](py::object core, py::handle depth, py::handle device) {
             const char* op = "HostStep";
             if (!py::isinstance<PyBlockBooks>(core))
               throw py::type_error("HostStep: core must be a _C.BlockBooks");
             return std::make_unique<PyHostStep>(core, read_int(op, "depth", depth),
                                                 static_cast<int>(read_int(op, "device", device)));
           }),
           py::arg("core"), py::arg("depth"), py::arg("device"),
           "Steps `core` through `depth` ring buffers; device: a CUDA device index, or -1\n"
           "for torch's CPU device.")
      .def_property_readonly("depth", [](PyHostStep& s) { return s.step.depth(); })
      .def_property_readonly("current", [](PyHostStep& s) { return s.step.current(); })
      .def_property_readonly("packs", [](PyHostStep& s) { return s.step.packs(); })
      .def_property_readonly_static(
          "compact_bytes", [](py::object) { return HostStep::kCompactBytes; },
          "The largest block table a pack gathers after the head (one copy, not two).")
      .def(
          "set_buffer",
          [](PyHostStep& s, py::handle k, py::object table, py::object head) {
            int64_t i = read_int("set_buffer", "k", k);
            s.step.set_buffer(i, reinterpret_cast<int32_t*>(tensor_ptr(table)),
                              reinterpret_cast<uint8_t*>(tensor_ptr(head)), tensor_bytes(head));
            s.held[2 * i] = std::move(table);
            s.held[2 * i + 1] = std::move(head);
          },
          py::arg("k"), py::arg("table"), py::arg("head"),
          "Ring buffer k: the block table (max_reqs x max_blocks_per_seq int32) and the\n"
          "head (the lengths and slot_mapping as laid out in the metadata buffer, then room\n"
          "for a table of compact_bytes), tensors on the host, pinned on CUDA.")
      .def(
          "set_out",
          [](PyHostStep& s, py::object out) {
            s.step.set_out(reinterpret_cast<uint8_t*>(tensor_ptr(out)), tensor_bytes(out));
            s.held.back() = std::move(out);
          },
          py::arg("out"), "The metadata buffer the packs are copied into.")
      .def("plan", &plan_of<PyHostStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), kPlanDoc)
      .def(
          "commit",
          [](PyHostStep& s) {
            BusyScope busy("update_block_table", s.busy());
            s.step.commit("update_block_table");
          },
          "Makes the planned update (RuntimeError if the books changed since).")
      .def("lengths", &lengths_of<PyHostStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), kLengthsDoc)
      .def("pack", &pack_of<PyHostStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), py::arg("layer"), py::arg("stream"), py::arg("known") = -1,
           py::arg("grow") = py::none(), kPackDoc)
      .def(
          "release",
          [](PyHostStep& s, py::handle req_ids) {
            const char* op = "release_seqs";
            BusyScope busy(op, s.busy());
            Ints ids;
            read_ints(op, "req_ids", req_ids, ids);
            s.step.release(op, ids.data(), ids.size());
          },
          py::arg("req_ids"), "Releases every block of the requests; all or none.")
      .def(
          "reset",
          [](PyHostStep& s) {
            BusyScope busy("reset_state", s.busy());
            s.step.reset();
          },
          "Back to empty, as after construction.")
      .def(
          "wait_all", [](PyHostStep& s) { s.step.wait_all(); },
          "Waits until the device has read every ring buffer.");
}

void bind_device_step(py::module_& m) {
  py::class_<PyDeviceStep>(m, "DeviceStep", "The gpu and hybrid designs' step path (step.h).")
      .def(py::init(
               [](py::object books, py::handle num_blocks, py::handle depth, py::handle device) {
                 const char* op = "DeviceStep";
                 auto s = std::make_unique<PyDeviceStep>();
                 int64_t d = read_int(op, "depth", depth);
                 int dev = static_cast<int>(read_int(op, "device", device));
                 if (py::isinstance<PyBlockBooks>(books)) {
                   auto& core = books.cast<PyBlockBooks&>();
                   s->step = std::make_unique<DeviceStep>(core, d, dev);
                   s->busy_flag = &core.busy;
                 } else if (py::isinstance<PyRequestTable>(books)) {
                   auto& table = books.cast<PyRequestTable&>();
                   int64_t blocks = read_int(op, "num_blocks", num_blocks);
                   check_range(op, "num_blocks", blocks, 1, kMaxInt32);
                   s->step = std::make_unique<DeviceStep>(table, blocks, d, dev);
                   s->busy_flag = &table.busy;
                 } else {
                   throw py::type_error(
                       "DeviceStep: books must be a _C.RequestTable or a _C.BlockBooks");
                 }
                 s->books_ref = std::move(books);
                 s->held.resize(s->step->depth() + 1);
                 s->graphs.resize(s->step->depth() * kFlagSets * 32);
                 return s;
               }),
           py::arg("books"), py::arg("num_blocks"), py::arg("depth"), py::arg("device"),
           "books: a _C.RequestTable (gpu: `num_blocks` blocks on the device's free stack)\n"
           "or a _C.BlockBooks (hybrid: the host allocates; num_blocks is not read).")
      .def_property_readonly("depth", [](PyDeviceStep& s) { return s.step->depth(); })
      .def_property_readonly("current", [](PyDeviceStep& s) { return s.step->current(); })
      .def_property_readonly("packs", [](PyDeviceStep& s) { return s.step->packs(); })
      .def_property_readonly("host_allocates",
                             [](PyDeviceStep& s) { return s.step->host_allocates(); })
      .def_property_readonly("num_free_blocks",
                             [](PyDeviceStep& s) { return s.step->num_free_blocks(); })
      .def_property_readonly("planned_blocks",
                             [](PyDeviceStep& s) { return s.step->planned_blocks(); })
      .def_property_readonly("staged_capacity",
                             [](PyDeviceStep& s) { return s.step->staged_capacity(); })
      .def(
          "set_buffer",
          [](PyDeviceStep& s, py::handle k, py::object words) {
            int64_t i = read_int("set_buffer", "k", k);
            s.step->set_buffer(i, reinterpret_cast<int32_t*>(tensor_ptr(words)),
                               tensor_bytes(words) / 4);
            s.held[i] = std::move(words);
          },
          py::arg("k"), py::arg("words"), "Ring buffer k (a host tensor, pinned on CUDA).")
      .def(
          "set_twin",
          [](PyDeviceStep& s, py::object twin) {
            s.step->set_twin(static_cast<cuda::DevicePtr>(tensor_ptr(twin)),
                             tensor_bytes(twin) / 4);
            s.held.back() = std::move(twin);
          },
          py::arg("twin"), "The device tensor every launch copies its staged words into.")
      .def(
          "set_out_bytes",
          [](PyDeviceStep& s, py::handle n) {
            s.step->set_out_bytes(read_int("set_out_bytes", "nbytes", n));
          },
          py::arg("nbytes"), "Bytes of the metadata buffer the kernels write.")
      .def(
          "set_graph",
          [](PyDeviceStep& s, py::handle flags, py::handle grid, py::handle buffer,
             py::object graph) {
            const char* op = "set_graph";
            int f = static_cast<int>(read_int(op, "flags", flags));
            int64_t g = read_int(op, "grid", grid);
            int64_t k = read_int(op, "buffer", buffer);
            auto& handle = graph.cast<cuda::GraphHandle&>();
            s.step->set_graph(f, g, k, &handle);
            s.graphs.at(DeviceStep::graph_index(f, g, k)) = std::move(graph);
          },
          py::arg("flags"), py::arg("grid"), py::arg("buffer"), py::arg("graph"),
          "Launches of these flags on `grid` programs from ring buffer `buffer` replay\n"
          "`graph` from now on.")
      .def(
          "clear_graphs",
          [](PyDeviceStep& s) {
            s.step->wait_all();  // no replay in flight when a graph goes
            s.step->clear_graphs();
            for (auto& g : s.graphs) g = py::object();
          },
          "Forgets every graph (their buffers are being replaced).")
      .def(
          "set_launcher",
          [](PyDeviceStep& s, py::object fn) {
            s.launcher = std::move(fn);
            s.step->set_launcher(
                [&s](int64_t buffer, int flags, int64_t grid) { s.launcher(buffer, flags, grid); });
          },
          py::arg("launcher"),
          "launcher(buffer, flags, grid): runs the kernels of a launch that has no graph\n"
          "(flags: release 4, update 2, pack 1, fused 8), reading ring buffer `buffer`.")
      .def("plan", &plan_of<PyDeviceStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), kPlanDoc)
      .def(
          "commit",
          [](PyDeviceStep& s, py::handle stream) {
            const char* op = "update_block_table";
            BusyScope busy(op, s.busy());
            s.step->commit(op, read_stream(op, stream));
          },
          py::arg("stream"), "Makes the planned update (RuntimeError if the books changed since).")
      .def("lengths", &lengths_of<PyDeviceStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), kLengthsDoc)
      .def("pack", &pack_of<PyDeviceStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), py::arg("layer"), py::arg("stream"), py::arg("known") = -1,
           py::arg("grow") = py::none(), kPackDoc)
      .def(
          "release",
          [](PyDeviceStep& s, py::handle req_ids, py::handle stream) {
            const char* op = "release_seqs";
            BusyScope busy(op, s.busy());
            Ints ids;
            read_ints(op, "req_ids", req_ids, ids);
            s.step->release(op, ids.data(), ids.size(), read_stream(op, stream));
          },
          py::arg("req_ids"), py::arg("stream"),
          "Releases every block of the requests; all or none.")
      .def(
          "flush",
          [](PyDeviceStep& s, py::handle stream) { s.step->flush(read_stream("flush", stream)); },
          py::arg("stream"),
          "Launches the deferred update or release, if any (it changes nothing the books\n"
          "say: allowed while another call reads its arguments, refused inside a launch).")
      .def(
          "set_free_stack",
          [](PyDeviceStep& s, py::object stack, py::object initial) {
            if (tensor_bytes(stack) != tensor_bytes(initial) ||
                tensor_bytes(stack) < 4 * s.step->num_free_blocks())
              throw py::value_error("set_free_stack: the stacks must hold every block, alike");
            s.step->set_free_stack(reinterpret_cast<uint8_t*>(tensor_ptr(stack)),
                                   reinterpret_cast<uint8_t*>(tensor_ptr(initial)));
            s.stacks = py::make_tuple(std::move(stack), std::move(initial));
          },
          py::arg("stack"), py::arg("initial"),
          "gpu: the free stack (int32, on the device) and its content at the start.")
      .def(
          "reset",
          [](PyDeviceStep& s, py::handle stream) {
            const char* op = "reset_state";
            BusyScope busy(op, s.busy());
            s.step->reset(read_stream(op, stream));
          },
          py::arg("stream"),
          "Back to empty, as after construction (what was staged is dropped; gpu: the free\n"
          "stack is restored on `stream`).")
      .def(
          "wait_all", [](PyDeviceStep& s) { s.step->wait_all(); },
          "Waits until the device has read every ring buffer.");
}

void bind_graphs(py::module_& m) {
  py::class_<cuda::GraphHandle, std::unique_ptr<cuda::GraphHandle>>(
      m, "CudaGraph", "An instantiated CUDA graph (end_capture makes one).")
      .def(
          "launch",
          [](const cuda::GraphHandle& g, py::handle stream) {
            g.launch(read_stream("launch", stream));
          },
          py::arg("stream"), "Launches the graph on `stream`.");
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
  m.def("cuda_available", &cuda::available, "Whether the CUDA driver can be loaded here.");
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
                             {"HEADER", staged::HEADER}})
    words[name] = value;
  m.attr("STAGED_WORDS") = words;
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
