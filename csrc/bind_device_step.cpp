// Bindings of the device step (device_step.h): _C.DeviceStep.
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "bind_step.h"
#include "device_step.h"
#include "sizes.h"

namespace {

// The Python-side step: the books it steps (kept alive), the tensors whose memory it
// stages into (kept alive until the device has read them), its graphs and launcher.
struct PyDeviceStep {
  py::object books_ref;  // a _C.RequestTable (gpu) or a _C.BlockBooks (hybrid)
  std::unique_ptr<DeviceStep> step;
  bool* busy_flag;
  std::vector<py::object> held;    // per buffer; then the twin
  std::vector<py::object> graphs;  // the CudaGraph objects set_graph was given
  py::object launcher;
  py::object grow;
  py::object stacks;
  py::object out = py::none();      // the metadata buffer's object (set_out's `buffer`)
  py::object staging = py::none();  // set_staging's object
  Region region;

  ~PyDeviceStep() {
    try {
      if (step) step->wait_all();
    } catch (...) {
    }
  }
  bool& busy() { return *busy_flag; }
};

DeviceStep& step_of(PyDeviceStep& s) { return *s.step; }

// Every graph goes, once no replay of one is in flight.
void forget_graphs(PyDeviceStep& s) {
  s.step->wait_all();
  s.step->clear_graphs();
  for (auto& g : s.graphs) g = py::none();
}

}  // namespace

void bind_device_step(py::module_& m) {
  py::class_<PyDeviceStep>(m, "DeviceStep",
                           "The gpu and hybrid designs' step path (device_step.h).")
      .def(py::init(
               [](py::object books, py::handle num_blocks, py::handle depth, py::handle device) {
                 const char* op = "DeviceStep";
                 auto s = std::make_unique<PyDeviceStep>();
                 int64_t d = read_int(op, "depth", depth);
                 int dev = read_device(op, device);
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
                 s->held.resize(s->step->depth() + 1, py::none());
                 s->graphs.resize(s->step->depth() * kFlagSets * 32, py::none());
                 return s;
               }),
           py::arg("books"), py::arg("num_blocks"), py::arg("depth"), py::arg("device"),
           "books: a _C.RequestTable (the gpu design: new blocks come from a free stack of\n"
           "`num_blocks` blocks on the device, block_source DEVICE_STACK) or a _C.BlockBooks\n"
           "(the hybrid design: from the books, HOST_BOOKS; num_blocks is not read).")
      .def_property_readonly("depth", [](PyDeviceStep& s) { return s.step->depth(); })
      .def_property_readonly(
          "block_source", [](PyDeviceStep& s) { return s.step->block_source(); },
          "Where the blocks an update adds come from (the one difference of gpu and hybrid).")
      .def_property_readonly(
          "flag_sets", [](PyDeviceStep& s) { return s.step->flag_sets(); },
          "The kernel sets (LAUNCH_FLAGS) a launch of this step can hold.")
      .def_property_readonly("num_free_blocks",
                             [](PyDeviceStep& s) { return s.step->num_free_blocks(); })
      .def_property_readonly("staged_capacity",
                             [](PyDeviceStep& s) { return s.step->staged_capacity(); })
      .def(
          "set_out",
          [](PyDeviceStep& s, py::object out, py::object buffer) {
            const char* op = "DeviceStep.set_out";
            TensorMemory o = tensor_memory(op, "out", out, s.step->on_cuda(), Place::kDevice);
            RegionScope region(op, s.region, RegionScope::kCall);
            forget_graphs(s);  // they address the buffer that goes
            s.step->set_out_bytes(o.nbytes);
            s.step->forget_pack();
            s.out = std::move(buffer);
          },
          py::arg("out"), py::arg("buffer"),
          "The metadata buffer the kernels write (its bytes) and `buffer`, its object (which\n"
          "holds it: what a pack's stats carry from now on), in one call: the graphs, which\n"
          "address the buffer before, and the last pack are forgotten.")
      .def(
          "set_staging",
          [](PyDeviceStep& s, py::object staging) {
            const char* op = "DeviceStep.set_staging";
            bool on_cuda = s.step->on_cuda();
            std::vector<DeviceStep::Words> buffers;
            std::vector<py::object> held;
            for (py::handle words : staging.attr("words")) {
              TensorMemory w = tensor_memory(op, "words", words, on_cuda, Place::kHost);
              buffers.push_back({reinterpret_cast<int32_t*>(w.data), w.nbytes / 4});
              held.push_back(py::reinterpret_borrow<py::object>(words));
            }
            py::object twin = staging.attr("twin");
            TensorMemory t{nullptr, 0};
            if (!twin.is_none()) t = tensor_memory(op, "twin", twin, on_cuda, Place::kDevice);
            RegionScope region(op, s.region, RegionScope::kCall);
            s.step->set_staging(buffers, reinterpret_cast<cuda::DevicePtr>(t.data), t.nbytes / 4);
            forget_graphs(s);  // they address the twin that goes
            held.push_back(twin);
            s.held = std::move(held);
            s.staging = std::move(staging);
          },
          py::arg("staging"),
          "Every ring buffer (staging.words: `depth` host tensors, pinned on CUDA) and the\n"
          "twin (staging.twin: a device tensor, or None) in one call, all or none; the graphs\n"
          "are forgotten. `staging` is kept (the `staging` property).")
      .def_property_readonly(
          "out", [](PyDeviceStep& s) { return s.out; }, "The `buffer` set_out was given last.")
      .def_property_readonly(
          "staging", [](PyDeviceStep& s) { return s.staging; },
          "The object set_staging was given last.")
      .def(
          "captured",
          [](PyDeviceStep& s, py::handle flags, py::handle grid) {
            int64_t f = read_int("captured", "flags", flags);
            int64_t g = read_int("captured", "grid", grid);
            check_range("captured", "flags", f, 1, kFlagSets - 1);
            check_range("captured", "grid", g, 1, int64_t{1} << 31);
            return !s.graphs.at(DeviceStep::graph_index(static_cast<int>(f), g, 0)).is_none();
          },
          py::arg("flags"), py::arg("grid"),
          "Whether launches of these flags on `grid` programs replay a graph.")
      .def("read", &read_of<PyDeviceStep>, py::arg("fn"), kReadDoc)
      .def(
          "set_graph",
          [](PyDeviceStep& s, py::handle flags, py::handle grid, py::handle buffer,
             py::object graph) {
            const char* op = "set_graph";
            int64_t f = read_int(op, "flags", flags);
            int64_t g = read_int(op, "grid", grid);
            int64_t k = read_int(op, "buffer", buffer);
            if (!py::isinstance<cuda::GraphHandle>(graph))
              throw py::type_error(std::string(op) + ": graph=" + safe_repr(graph) +
                                   " is not a CudaGraph");
            auto& handle = graph.cast<cuda::GraphHandle&>();
            RegionScope region(op, s.region, RegionScope::kCall);
            s.step->set_graph(f, g, k, &handle);
            s.graphs.at(DeviceStep::graph_index(static_cast<int>(f), g, k)) = std::move(graph);
          },
          py::arg("flags"), py::arg("grid"), py::arg("buffer"), py::arg("graph"),
          "Launches of these flags on `grid` programs from ring buffer `buffer` replay\n"
          "`graph` from now on.")
      .def(
          "set_launcher",
          [](PyDeviceStep& s, py::object fn) {
            s.launcher = std::move(fn);
            s.step->set_launcher(
                [&s](int64_t buffer, int flags, int64_t grid) { s.launcher(buffer, flags, grid); });
          },
          py::arg("launcher"),
          "launcher(buffer, flags, grid): runs the kernels of a launch that has no graph\n"
          "(flags: LAUNCH_FLAGS), reading ring buffer `buffer`.")
      .def("plan", &plan_of<PyDeviceStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), kPlanDoc)
      .def(
          "commit",
          [](PyDeviceStep& s, py::handle stream) {
            const char* op = "update_block_table";
            BusyScope busy(op, s.busy());
            cuda::Stream st = read_stream(op, stream);
            RegionScope region(op, s.region, RegionScope::kCall);
            s.step->commit(op, st);
          },
          py::arg("stream"), "Makes the planned update (RuntimeError if the books changed since).")
      .def("lengths", &lengths_of<PyDeviceStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), kLengthsDoc)
      .def("pack", &pack_of<PyDeviceStep>, py::arg("req_ids"), py::arg("num_prefill_seqs"),
           py::arg("init_prefill_lens"), py::arg("layer"), py::arg("stream"), py::arg("known") = -1,
           kPackDoc)
      .def("set_grow", &set_grow_of<PyDeviceStep>, py::arg("grow"), kSetGrowDoc)
      .def(
          "release",
          [](PyDeviceStep& s, py::handle req_ids, py::handle stream) {
            const char* op = "release_seqs";
            BusyScope busy(op, s.busy());
            Ints ids;
            read_ints(op, "req_ids", req_ids, ids);
            cuda::Stream st = read_stream(op, stream);
            RegionScope region(op, s.region, RegionScope::kCall);
            s.step->release(op, ids.data(), ids.size(), st);
          },
          py::arg("req_ids"), py::arg("stream"),
          "Releases every block of the requests; all or none.")
      .def(
          "match_prefix",
          [](PyDeviceStep& s, py::handle req_id, py::handle block_hashes, py::handle stream) {
            const char* op = "match_prefix";
            BusyScope busy(op, s.busy());
            int64_t id = read_int(op, "req_id", req_id);
            Ints hashes;
            read_ints(op, "block_hashes", block_hashes, hashes);
            cuda::Stream st = read_stream(op, stream);
            RegionScope region(op, s.region, RegionScope::kCall);
            return s.step->match_prefix(op, id, hashes.data(), hashes.size(), st);
          },
          py::arg("req_id"), py::arg("block_hashes"), py::arg("stream"),
          "The prefix cache's match (DEVICE_STACK): the request registered at the returned\n"
          "length, the moves of its blocks staged.")
      .def(
          "prefix_cache_stats",
          [](const PyDeviceStep& s) {
            PrefixCacheStats c = s.step->prefix_cache_stats();
            return py::make_tuple(c.cached_blocks, c.evictable_blocks, c.queried_blocks,
                                  c.hit_blocks, c.evicted_blocks);
          },
          "(cached_blocks, evictable_blocks, queried_blocks, hit_blocks, evicted_blocks).")
      .def(
          "cached_entries",
          [](const PyDeviceStep& s, py::handle req_id) {
            return s.step->cached_entries(read_int("cached_entries", "req_id", req_id));
          },
          py::arg("req_id"), "Per block of the request: the cache entry it holds, or -1.")
      .def(
          "indexed_entries", [](const PyDeviceStep& s) { return s.step->indexed_entries(); },
          "The cache entries indexed now.")
      .def(
          "check_prefix", [](const PyDeviceStep& s) { return s.step->check_prefix(); },
          "An empty string when the prefix cache's books agree with the rows.")
      .def(
          "flush",
          [](PyDeviceStep& s, py::handle stream) {
            cuda::Stream st = read_stream("flush", stream);
            RegionScope region("flush", s.region, RegionScope::kCall);
            s.step->flush(st);
          },
          py::arg("stream"),
          "Launches the deferred update or release, if any (it changes nothing the books\n"
          "say: allowed while another call reads its arguments, refused inside a launch).")
      .def(
          "set_free_stack",
          [](PyDeviceStep& s, py::object stack, py::object initial) {
            const char* op = "DeviceStep.set_free_stack";
            bool on_cuda = s.step->on_cuda();
            TensorMemory a = tensor_memory(op, "stack", stack, on_cuda, Place::kDevice);
            TensorMemory b = tensor_memory(op, "initial", initial, on_cuda, Place::kDevice);
            s.step->set_free_stack(a.data, b.data, std::min(a.nbytes, b.nbytes));
            s.stacks = py::make_tuple(std::move(stack), std::move(initial));
          },
          py::arg("stack"), py::arg("initial"),
          "gpu: the free stack (int32, on the device) and its content at the start.")
      .def(
          "reset",
          [](PyDeviceStep& s, py::handle stream) {
            const char* op = "reset_state";
            BusyScope busy(op, s.busy());
            cuda::Stream st = read_stream(op, stream);
            RegionScope region(op, s.region, RegionScope::kCall);
            s.step->reset(st);
          },
          py::arg("stream"),
          "Back to empty, as after construction (what was staged is dropped; gpu: the free\n"
          "stack is restored on `stream`).")
      .def(
          "wait_all", [](PyDeviceStep& s) { s.step->wait_all(); },
          "Waits until the device has read every ring buffer.");
}
