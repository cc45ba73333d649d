// Bindings of the host step (host_step.h): _C.HostStep.
#include <memory>
#include <utility>
#include <vector>

#include "bind_step.h"
#include "host_step.h"

namespace {

// The Python-side step: the core object it steps (kept alive), the tensors whose
// memory they stage into and send to (kept alive until the device has read them).
struct PyHostStep {
  py::object core_ref;
  HostStep step;
  std::vector<py::object> held;  // per buffer: table and head; then the out buffer
  py::object out = py::none();   // the metadata buffer's object (set_out's `buffer`)
  py::object grow;
  Region region;

  PyHostStep(py::object core, int64_t depth, int device)
      : core_ref(std::move(core)),
        step(core_ref.cast<PyBlockBooks&>(), depth, device),
        held(2 * step.depth() + 1, py::none()) {}
  ~PyHostStep() {
    try {
      step.wait_all();
    } catch (...) {  // the device is gone (interpreter exit): nothing in flight to wait for
    }
  }
  bool& busy() { return core_ref.cast<PyBlockBooks&>().busy; }
};

HostStep& step_of(PyHostStep& s) { return s.step; }

}  // namespace

void bind_host_step(py::module_& m) {
  py::class_<PyHostStep>(m, "HostStep", "The cpu design's step path (host_step.h).")
      .def(py::init([](py::object core, py::handle depth, py::handle device) {
             const char* op = "HostStep";
             if (!py::isinstance<PyBlockBooks>(core))
               throw py::type_error("HostStep: core must be a _C.BlockBooks");
             return std::make_unique<PyHostStep>(core, read_int(op, "depth", depth),
                                                 read_device(op, device));
           }),
           py::arg("core"), py::arg("depth"), py::arg("device"),
           "Steps `core` through `depth` ring buffers; device: a CUDA device index, or -1\n"
           "for torch's CPU device.")
      .def_property_readonly("depth", [](PyHostStep& s) { return s.step.depth(); })
      .def_property_readonly("current", [](PyHostStep& s) { return s.step.current(); })
      .def_property_readonly_static(
          "compact_bytes", [](py::object) { return HostStep::kCompactBytes; },
          "The largest block table a pack gathers after the head (one copy, not two).")
      .def(
          "set_buffer",
          [](PyHostStep& s, py::handle k, py::object table, py::object head) {
            const char* op = "HostStep.set_buffer";
            int64_t i = read_int(op, "k", k);
            TensorMemory t = tensor_memory(op, "table", table, s.step.on_cuda(), Place::kHost);
            TensorMemory h = tensor_memory(op, "head", head, s.step.on_cuda(), Place::kHost);
            RegionScope region(op, s.region, RegionScope::kCall);
            s.step.set_buffer(i, reinterpret_cast<int32_t*>(t.data), t.nbytes, h.data, h.nbytes);
            s.held[2 * i] = std::move(table);
            s.held[2 * i + 1] = std::move(head);
          },
          py::arg("k"), py::arg("table"), py::arg("head"),
          "Ring buffer k: the block table (max_reqs x max_blocks_per_seq int32) and the\n"
          "head (the lengths and slot_mapping as laid out in the metadata buffer, then room\n"
          "for a table of compact_bytes), tensors on the host, pinned on CUDA.")
      .def(
          "set_out",
          [](PyHostStep& s, py::object out, py::object buffer) {
            const char* op = "HostStep.set_out";
            TensorMemory o = tensor_memory(op, "out", out, s.step.on_cuda(), Place::kDevice);
            RegionScope region(op, s.region, RegionScope::kCall);
            s.step.set_out(o.data, o.nbytes);
            s.held.back() = std::move(out);
            s.out = std::move(buffer);
          },
          py::arg("out"), py::arg("buffer") = py::none(),
          "The metadata buffer the packs are copied into, in one call with `buffer` (what a\n"
          "pack's stats carry from now on: the object that knows its views). The last pack\n"
          "is forgotten.")
      .def_property_readonly(
          "out", [](PyHostStep& s) { return s.out; }, "The `buffer` set_out was given last.")
      .def_property_readonly(
          "heads",
          [](PyHostStep& s) {
            py::list heads;
            for (int64_t k = 0; k < s.step.depth(); ++k) heads.append(s.held[2 * k + 1]);
            return heads;
          },
          "The ring buffers' heads (set_buffer), None where none was set.")
      .def("read", &read_of<PyHostStep>, py::arg("fn"), kReadDoc)
      .def("plan", &plan_of<PyHostStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), kPlanDoc)
      .def(
          "commit",
          [](PyHostStep& s, py::handle stream) {
            const char* op = "update_block_table";
            BusyScope busy(op, s.busy());
            read_stream(op, stream);  // as the device step's: the host step enqueues nothing
            RegionScope region(op, s.region, RegionScope::kCall);
            s.step.commit(op);
          },
          py::arg("stream"), "Makes the planned update (RuntimeError if the books changed since).")
      .def("lengths", &lengths_of<PyHostStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), kLengthsDoc)
      .def("pack", &pack_of<PyHostStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), py::arg("layer"), py::arg("stream"), py::arg("known") = -1,
           kPackDoc)
      .def("set_grow", &set_grow_of<PyHostStep>, py::arg("grow"), kSetGrowDoc)
      .def(
          "release",
          [](PyHostStep& s, py::handle req_ids) {
            const char* op = "release_seqs";
            BusyScope busy(op, s.busy());
            Ints ids;
            read_ints(op, "req_ids", req_ids, ids);
            RegionScope region(op, s.region, RegionScope::kCall);
            s.step.release(op, ids.data(), ids.size());
          },
          py::arg("req_ids"), "Releases every block of the requests; all or none.")
      .def(
          "reset",
          [](PyHostStep& s) {
            BusyScope busy("reset_state", s.busy());
            RegionScope region("reset_state", s.region, RegionScope::kCall);
            s.step.reset();
          },
          "Back to empty, as after construction.")
      .def(
          "wait_all", [](PyHostStep& s) { s.step.wait_all(); },
          "Waits until the device has read every ring buffer.");
}
