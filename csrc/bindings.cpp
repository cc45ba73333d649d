// Python bindings of the C++ core (disagmoe._C). Only bindings live here.
//
// Every argument is read by py_args.h (once, into owned values, with errors that
// name it); no parameter is converted by pybind11 itself, so no error shows a
// binding signature. A call that can change an object marks it busy while it
// runs: Python code that the call runs (an argument's __index__) or another
// thread cannot start a second such call on the same object meanwhile.
#include "bindings.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <structmember.h>

#include <cstddef>
#include <memory>

#include "block_books.h"
#include "py_args.h"
#include "sizes.h"

namespace py = pybind11;
using namespace disagmoe;

namespace {

// BatchStats as a small C type of read-only int fields (and the buffer a pack wrote,
// `buffer`). The pack path makes one and reads about ten fields every step: a pybind11 property
// read costs several times a member's, and making this costs less than a tuple (no int object per
// field, nothing for the garbage collector to track). It has no positions, only names.
struct PyBatchStats {
  PyObject ob_base;  // PyObject_HEAD
  BatchStats stats;
  PyObject* buffer;  // what the pack wrote into (its step's set_out), or None
};

#define DISAGMOE_STATS_FIELD(name, doc) \
  {#name, T_LONGLONG, offsetof(PyBatchStats, stats) + offsetof(BatchStats, name), READONLY, doc}
PyMemberDef batch_stats_fields[] = {
    DISAGMOE_STATS_FIELD(batch_size, "entries in the batch"),
    DISAGMOE_STATS_FIELD(num_prefills, "prefill entries (the first ones)"),
    DISAGMOE_STATS_FIELD(num_tokens, "query tokens: num_prefill_tokens + num_decode_tokens"),
    DISAGMOE_STATS_FIELD(num_prefill_tokens, "query tokens of the prefill entries"),
    DISAGMOE_STATS_FIELD(num_decode_tokens, "query tokens of the decode entries (one each)"),
    DISAGMOE_STATS_FIELD(max_query_len, "longest query"),
    DISAGMOE_STATS_FIELD(max_seq_len, "longest length after the step"),
    DISAGMOE_STATS_FIELD(max_prefill_seq_len, "longest prefill entry's length (0 without one)"),
    DISAGMOE_STATS_FIELD(max_decode_seq_len, "longest decode entry's length (0 without one)"),
    DISAGMOE_STATS_FIELD(max_decode_query_len, "1 with a decode entry, else 0"),
    DISAGMOE_STATS_FIELD(width, "blocks of the longest request: the block table's width"),
    {"buffer", T_OBJECT, offsetof(PyBatchStats, buffer), READONLY,
     "the metadata buffer the pack wrote (the object its step was given with it), or None"},
    {nullptr, 0, 0, 0, nullptr}};
#undef DISAGMOE_STATS_FIELD
constexpr int kBatchStatsFields = 11;
static_assert(sizeof(BatchStats) == kBatchStatsFields * sizeof(int64_t),
              "batch_stats_fields lists every BatchStats field");

PyObject* batch_stats_repr(PyObject* self) {
  const BatchStats& s = reinterpret_cast<PyBatchStats*>(self)->stats;
  std::string text = "BatchStats(";
  const int64_t* values = &s.batch_size;
  for (int k = 0; k < kBatchStatsFields; ++k)
    text += std::string(k ? ", " : "") + batch_stats_fields[k].name + "=" + str(values[k]);
  return PyUnicode_FromString((text + ")").c_str());
}

void batch_stats_dealloc(PyObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  Py_XDECREF(reinterpret_cast<PyBatchStats*>(self)->buffer);
  type->tp_free(self);
  Py_DECREF(type);
}

PyType_Slot batch_stats_slots[] = {
    {Py_tp_doc,
     const_cast<char*>("The host integers of a batch's FlashAttention metadata (named as there)\n"
                       "and the shape of its arrays, known without touching the device.")},
    {Py_tp_members, batch_stats_fields},
    {Py_tp_repr, reinterpret_cast<void*>(batch_stats_repr)},
    {Py_tp_dealloc, reinterpret_cast<void*>(batch_stats_dealloc)},
    {0, nullptr}};
PyType_Spec batch_stats_spec = {"disagmoe._C.BatchStats", sizeof(PyBatchStats), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
                                batch_stats_slots};
PyTypeObject* batch_stats_type = nullptr;

py::object make_stats(const BatchStats& s, py::handle buffer) {
  PyObject* out = batch_stats_type->tp_alloc(batch_stats_type, 0);
  if (!out) throw py::error_already_set();
  auto* stats = reinterpret_cast<PyBatchStats*>(out);
  stats->stats = s;
  stats->buffer = buffer.inc_ref().ptr();
  return py::reinterpret_steal<py::object>(out);
}

void bind_metadata_layout(py::module_& m) {
  py::class_<MetadataLayout>(m, "MetadataLayout",
                             "Byte offsets of the metadata arrays in one packed buffer: the\n"
                             "row-major [batch_size, width] int32 block table first, then int64\n"
                             "slot_mapping and int32 seq_lens, context_lens, query_start_loc and\n"
                             "seq_start_loc; nbytes in all (a multiple of 8).")
      .def_readonly("batch_size", &MetadataLayout::batch_size)
      .def_readonly("width", &MetadataLayout::width)
      .def_readonly("num_tokens", &MetadataLayout::num_tokens)
      .def_readonly("slot_mapping", &MetadataLayout::slot_mapping)
      .def_readonly("seq_lens", &MetadataLayout::seq_lens)
      .def_readonly("context_lens", &MetadataLayout::context_lens)
      .def_readonly("query_start_loc", &MetadataLayout::query_start_loc)
      .def_readonly("seq_start_loc", &MetadataLayout::seq_start_loc)
      .def_readonly("block_tables", &MetadataLayout::block_tables)
      .def_readonly("nbytes", &MetadataLayout::nbytes)
      .def("__repr__", [](const MetadataLayout& l) {
        return "MetadataLayout(batch_size=" + str(l.batch_size) + ", width=" + str(l.width) +
               ", num_tokens=" + str(l.num_tokens) + ", nbytes=" + str(l.nbytes) + ")";
      });
  m.def(
      "metadata_layout",
      [](py::handle batch_size, py::handle width, py::handle num_tokens) {
        const char* op = "metadata_layout";
        return metadata_layout(read_int(op, "batch_size", batch_size), read_int(op, "width", width),
                               read_int(op, "num_tokens", num_tokens));
      },
      py::arg("batch_size"), py::arg("width"), py::arg("num_tokens"),
      "The MetadataLayout of a batch's metadata; ValueError when a count is outside\n"
      "[0, 2**31 - 1].");
}

void bind_request_table(py::module_& m) {
  py::class_<PyRequestTable>(m, "RequestTable",
                             "Host books of running requests: id -> row, lengths, free rows.")
      .def(py::init([](py::handle max_reqs, py::handle max_seq_len, py::handle block_size) {
             const char* op = "RequestTable";
             return std::make_unique<PyRequestTable>(read_int(op, "max_reqs", max_reqs),
                                                     read_int(op, "max_seq_len", max_seq_len),
                                                     read_int(op, "block_size", block_size));
           }),
           py::arg("max_reqs"), py::arg("max_seq_len"), py::arg("block_size"),
           "ValueError when a size is outside [1, 2**31 - 1] or the books would not fit in\n"
           "this machine's memory.")
      .def_property_readonly("max_reqs", &PyRequestTable::max_reqs)
      .def_property_readonly("num_reqs", &PyRequestTable::num_reqs)
      .def_property_readonly("num_free_rows", &PyRequestTable::num_free_rows)
      .def(
          "seq_len",
          [](const PyRequestTable& t, py::handle req_id) {
            int64_t id = read_int("seq_len", "req_id", req_id);
            int32_t row = t.row_of(id);
            if (row < 0)
              throw UnknownRequest("seq_len: request id " + str(id) + " is not a running request");
            return t.seq_len_of_row(row);
          },
          py::arg("req_id"))
      .def(
          "row_of",
          [](const PyRequestTable& t, py::handle req_id) {
            return t.row_of(read_int("row_of", "req_id", req_id));
          },
          py::arg("req_id"), "The request's row, or -1.")
      .def("req_ids", &PyRequestTable::req_ids, "Running request ids, in row order.");
}

void bind_block_books(py::module_& m) {
  py::class_<PyBlockBooks>(m, "BlockBooks",
                           "The host's books of KV-cache blocks: request rows, free blocks,\n"
                           "block tables, and the metadata packed from them.")
      .def(py::init([](py::handle block_size, py::handle num_blocks, py::handle max_seq_len,
                       py::handle max_reqs) {
             const char* op = "BlockBooks";
             return std::make_unique<PyBlockBooks>(
                 read_int(op, "block_size", block_size), read_int(op, "num_blocks", num_blocks),
                 read_int(op, "max_seq_len", max_seq_len), read_int(op, "max_reqs", max_reqs));
           }),
           py::arg("block_size"), py::arg("num_blocks"), py::arg("max_seq_len"),
           py::arg("max_reqs"),
           "ValueError when a size is outside [1, 2**31 - 1], the pool's slots\n"
           "(num_blocks * block_size) pass 2**31 - 1, or the tables would not fit in this\n"
           "machine's memory.")
      .def_property_readonly("max_blocks_per_seq", &PyBlockBooks::max_blocks_per_seq)
      .def_property_readonly("num_reqs", [](const PyBlockBooks& b) { return b.table().num_reqs(); })
      .def("num_free_blocks", &PyBlockBooks::num_free_blocks)
      .def(
          "block_ids",
          [](const PyBlockBooks& bm, py::handle req_id) {
            return bm.block_ids("block_ids", read_int("block_ids", "req_id", req_id));
          },
          py::arg("req_id"))
      .def(
          "seq_len",
          [](const PyBlockBooks& bm, py::handle req_id) {
            int64_t id = read_int("seq_len", "req_id", req_id);
            int32_t row = bm.table().row_of(id);
            if (row < 0)
              throw UnknownRequest("seq_len: request id " + str(id) + " is not a running request");
            return bm.table().seq_len_of_row(row);
          },
          py::arg("req_id"))
      .def(
          "row_of",
          [](const PyBlockBooks& bm, py::handle req_id) {
            return bm.table().row_of(read_int("row_of", "req_id", req_id));
          },
          py::arg("req_id"), "The request's row, or -1.")
      .def("req_ids", [](const PyBlockBooks& bm) { return bm.table().req_ids(); })
      .def(
          "match_prefix",
          [](PyBlockBooks& bm, py::handle req_id, py::handle block_hashes) {
            const char* op = "match_prefix";
            BusyScope busy(op, bm.busy);
            int64_t id = read_int(op, "req_id", req_id);
            Ints hashes;
            read_ints(op, "block_hashes", block_hashes, hashes);
            return bm.match_prefix(op, id, hashes.data(), hashes.size());
          },
          py::arg("req_id"), py::arg("block_hashes"),
          "Registers the request at the length of its longest cached prefix (its blocks\n"
          "in its row, a reference each) and returns that length (docs/prefix-caching.md).")
      .def(
          "unstaged_rows",
          [](const PyBlockBooks& bm) {
            std::vector<int32_t> rows;
            for (int64_t row = 0; row < bm.table().max_reqs(); ++row)
              if (bm.unstaged(static_cast<int32_t>(row))) rows.push_back(static_cast<int32_t>(row));
            return rows;
          },
          "Rows of matched requests whose matched blocks no update has staged yet.")
      .def(
          "prefix_cache_stats",
          [](const PyBlockBooks& bm) {
            PrefixCacheStats s = bm.prefix_cache_stats();
            return py::make_tuple(s.cached_blocks, s.evictable_blocks, s.queried_blocks,
                                  s.hit_blocks, s.evicted_blocks);
          },
          "(cached_blocks, evictable_blocks, queried_blocks, hit_blocks, evicted_blocks).")
      .def("check_integrity", &PyBlockBooks::check_integrity,
           "An empty string when every invariant holds, else what is wrong.");
}

}  // namespace

py::object stats_object(const BatchStats& s, py::handle buffer) { return make_stats(s, buffer); }

PYBIND11_MODULE(_C, m) {
  m.doc() = "disagmoe's C++ core: host block tables and request books.";
  py::register_exception<CacheExhausted>(m, "KVCacheExhausted", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const UnknownRequest& e) {
      PyErr_SetString(PyExc_KeyError, e.what());
    }
  });
  m.attr("PAD_BLOCK_ID") = kPadBlockId;
  py::object stats_type = py::reinterpret_steal<py::object>(PyType_FromSpec(&batch_stats_spec));
  if (!stats_type) throw py::error_already_set();
  py::list names;
  for (int k = 0; k < kBatchStatsFields; ++k) names.append(batch_stats_fields[k].name);
  stats_type.attr("__match_args__") = py::tuple(names);
  batch_stats_type = reinterpret_cast<PyTypeObject*>(stats_type.ptr());
  m.attr("BatchStats") = stats_type;
  bind_metadata_layout(m);
  bind_request_table(m);
  bind_block_books(m);
  bind_step(m);
}
