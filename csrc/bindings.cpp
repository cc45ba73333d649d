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

#include <algorithm>
#include <cstddef>
#include <memory>
#include <tuple>

#include "block_books.h"
#include "py_args.h"
#include "sizes.h"

namespace py = pybind11;
using namespace disagmoe;

namespace {

// BatchStats as a small C type of read-only int fields. The pack path makes one and
// reads about ten fields every step: a pybind11 property read costs several times a
// member's, and making this costs less than a tuple (no int object per field,
// nothing for the garbage collector to track). It has no positions, only names.
struct PyBatchStats {
  PyObject ob_base;  // PyObject_HEAD
  BatchStats stats;
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

PyType_Slot batch_stats_slots[] = {
    {Py_tp_doc,
     const_cast<char*>("The host integers of a batch's FlashAttention metadata (named as there)\n"
                       "and the shape of its arrays, known without touching the device.")},
    {Py_tp_members, batch_stats_fields},
    {Py_tp_repr, reinterpret_cast<void*>(batch_stats_repr)},
    {0, nullptr}};
PyType_Spec batch_stats_spec = {"disagmoe._C.BatchStats", sizeof(PyBatchStats), 0,
                                Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
                                batch_stats_slots};
PyTypeObject* batch_stats_type = nullptr;

py::object make_stats(const BatchStats& s) {
  PyObject* out = batch_stats_type->tp_alloc(batch_stats_type, 0);
  if (!out) throw py::error_already_set();
  reinterpret_cast<PyBatchStats*>(out)->stats = s;
  return py::reinterpret_steal<py::object>(out);
}

py::tuple layout_key(const MetadataLayout& l) {
  return py::make_tuple(l.batch_size, l.width, l.num_tokens, l.slot_mapping, l.seq_lens,
                        l.context_lens, l.query_start_loc, l.seq_start_loc, l.block_tables,
                        l.nbytes);
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
      .def("__eq__",
           [](const MetadataLayout& a, py::handle b) -> py::object {
             if (!py::isinstance<MetadataLayout>(b))
               return py::reinterpret_borrow<py::object>(Py_NotImplemented);
             return py::bool_(layout_key(a).equal(layout_key(b.cast<const MetadataLayout&>())));
           })
      .def("__hash__", [](const MetadataLayout& l) { return py::hash(layout_key(l)); })
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

// RequestTable.lookup and BlockBooks.lookup: rows, lengths, query lengths and their
// exclusive prefix sums of a batch of running requests, at out[k * stride].
template <class Books>
py::tuple lookup_into(Books& books, bool& busy_flag, int64_t max_reqs, py::handle req_ids,
                      py::handle num_prefill, py::handle lens, py::handle out_buf,
                      py::handle stride, py::handle op_name) {
  std::string name = read_str("lookup", "op", op_name);
  const char* op = name.c_str();
  BusyScope busy(op, busy_flag);
  Batch batch(op, req_ids, num_prefill, lens);
  int64_t s = read_int(op, "stride", stride);
  auto out = out_buffer<int32_t>(op, "out", out_buf);
  BatchView b = batch.view();
  check_regions(op, "out", out.size, 5, s, std::min(b.size, max_reqs) + 1);
  BatchLookup l{out.data, out.data + s, out.data + 2 * s, out.data + 3 * s, out.data + 4 * s};
  BatchStats stats = books.lookup(op, b, l);
  return py::make_tuple(make_stats(stats), to_list(l.seq_lens, b.size));
}

const char* kLookupDoc =
    "Reads a batch of running requests: writes rows, lengths, query lengths and the\n"
    "exclusive prefix sums of query lengths and of lengths at out[k * stride],\n"
    "k = 0..4; errors name `op`. Returns (BatchStats, lengths as a list).";

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
      .def_property_readonly("max_seq_len", &PyRequestTable::max_seq_len)
      .def_property_readonly("block_size", &PyRequestTable::block_size)
      .def_property_readonly("num_reqs", &PyRequestTable::num_reqs)
      .def_property_readonly("num_free_rows", &PyRequestTable::num_free_rows)
      .def(
          "advance",
          [](PyRequestTable& t, py::handle req_ids, py::handle num_prefill, py::handle lens,
             py::handle num_free_blocks, py::handle plan, py::handle stride) {
            const char* op = "advance";
            BusyScope busy(op, t.busy);
            Batch batch(op, req_ids, num_prefill, lens);
            int64_t free = read_int(op, "num_free_blocks", num_free_blocks);
            int64_t s = read_int(op, "stride", stride);
            auto out = out_buffer<int32_t>(op, "plan", plan);
            BatchView b = batch.view();
            check_regions(op, "plan", out.size, 4, s, std::min(b.size, t.max_reqs()) + 1);
            StepPlan p = t.scratch_plan();
            int64_t blocks = t.advance(op, b, free, p);
            copy_plan(p, {out.data, out.data + s, out.data + 2 * s, out.data + 3 * s}, b.size);
            return py::make_tuple(blocks, to_list(p.new_lens, b.size));
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("num_free_blocks"), py::arg("plan"), py::arg("stride"),
          "The books' part of a first-layer update: checks the batch, registers new\n"
          "requests, advances lengths, and writes the plan of the blocks the caller takes:\n"
          "rows, old lengths, new lengths and block offsets (B + 1 entries) at\n"
          "plan[0], plan[stride], plan[2 * stride], plan[3 * stride].\n"
          "Returns (number of new blocks, new lengths as a list).")
      .def(
          "lookup",
          [](PyRequestTable& t, py::handle req_ids, py::handle num_prefill, py::handle lens,
             py::handle out_buf, py::handle stride, py::handle op_name) {
            return lookup_into(t, t.busy, t.max_reqs(), req_ids, num_prefill, lens, out_buf, stride,
                               op_name);
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("out"), py::arg("stride"), py::arg("op") = "lookup", kLookupDoc)
      .def(
          "release_seqs",
          [](PyRequestTable& t, py::handle req_ids) {
            const char* op = "release_seqs";
            BusyScope busy(op, t.busy);
            Ints ids;
            read_ints(op, "req_ids", req_ids, ids);
            std::vector<int32_t> rows(ids.size()), lens(ids.size());
            t.release_seqs(op, ids.data(), ids.size(), rows.data(), lens.data());
            return py::make_tuple(rows, lens);
          },
          py::arg("req_ids"), "Forgets the requests (all or none); returns their (rows, lengths).")
      .def(
          "reset_state",
          [](PyRequestTable& t) {
            BusyScope busy("reset_state", t.busy);
            t.reset_state();
          },
          "Back to empty, as after construction.")
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
      .def_property_readonly("block_size", &PyBlockBooks::block_size)
      .def_property_readonly("num_blocks", &PyBlockBooks::num_blocks)
      .def_property_readonly("max_blocks_per_seq", &PyBlockBooks::max_blocks_per_seq)
      .def_property_readonly("num_reqs", [](const PyBlockBooks& b) { return b.table().num_reqs(); })
      .def("num_free_blocks", &PyBlockBooks::num_free_blocks)
      .def(
          "update_block_table",
          [](PyBlockBooks& bm, py::handle req_ids, py::handle num_prefill, py::handle lens,
             py::handle first_layer) {
            const char* op = "update_block_table";
            BusyScope busy(op, bm.busy);
            Batch batch(op, req_ids, num_prefill, lens);
            bool first = read_bool(op, "first_layer", first_layer);
            BatchView b = batch.view();
            return to_list(bm.update_block_table(op, b, first), b.size);
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("first_layer"),
          "First layer: reserves slots for the batch's new tokens; any layer: returns the\n"
          "lengths after this step, in batch order.")
      .def(
          "pack_flash_attn_metadata",
          [](PyBlockBooks& bm, py::handle req_ids, py::handle num_prefill, py::handle lens,
             py::handle out, py::handle grow, py::handle buffer) {
            const char* op = "pack_flash_attn_metadata";
            BusyScope busy(op, bm.busy);
            Batch batch(op, req_ids, num_prefill, lens);
            auto buf = out_buffer<uint8_t>(op, "out", out);
            int64_t index = read_int(op, "buffer", buffer);
            check_range(op, "buffer", index, -1, BlockBooks::kMaxBuffers - 1);
            BatchView b = batch.view();
            PackResult r = bm.pack_flash_attn_metadata(op, b, buf.data, buf.size, index);
            if (!r.written && !grow.is_none()) {
              // The batch stays the one read above: reading it again could read another.
              py::object bigger = grow(r.layout.nbytes);
              buf = out_buffer<uint8_t>(op, "grow(nbytes)", bigger);
              r = bm.pack_flash_attn_metadata(op, b, buf.data, buf.size, index);
              if (!r.written)
                throw py::value_error(std::string(op) + ": grow(" + str(r.layout.nbytes) +
                                      ") returned a buffer of " + str(buf.size) + " bytes");
            }
            py::object seq_lens = py::none();
            if (r.written)
              seq_lens = to_list(reinterpret_cast<int32_t*>(buf.data + r.layout.seq_lens), b.size);
            return py::make_tuple(make_stats(r.stats), seq_lens);
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("out"), py::arg("grow") = py::none(), py::arg("buffer") = -1,
          "Writes all metadata arrays into the byte buffer `out` as metadata_layout() lays\n"
          "them out. Returns (BatchStats, seq_lens). When `out` is smaller than the\n"
          "layout's nbytes, calls grow(nbytes) for a buffer that holds them and writes\n"
          "there; without grow, writes nothing and returns seq_lens None. `buffer` in\n"
          "[0, 16) names the buffer among the caller's: rows it holds from its last pack\n"
          "get only their new blocks (the buffer must not change in between).")
      .def(
          "update_block_table_plan",
          [](PyBlockBooks& bm, py::handle req_ids, py::handle num_prefill, py::handle lens,
             py::handle plan, py::handle stride, py::handle block_ids, py::handle grow) {
            const char* op = "update_block_table";
            BusyScope busy(op, bm.busy);
            Batch batch(op, req_ids, num_prefill, lens);
            int64_t s = read_int(op, "stride", stride);
            auto out = out_buffer<int32_t>(op, "plan", plan);
            auto ids = out_buffer<int32_t>(op, "block_ids", block_ids);
            BatchView b = batch.view();
            check_regions(op, "plan", out.size, 4, s, std::min(b.size, bm.table().max_reqs()) + 1);
            StepPlan p{out.data, out.data + s, out.data + 2 * s, out.data + 3 * s};
            auto [blocks, lengths] = bm.update_block_table_plan(op, b, p, ids.data, ids.size);
            if (!lengths && !grow.is_none()) {
              // The batch stays the one read above: reading it again could read another.
              py::object bigger = grow(blocks);
              ids = out_buffer<int32_t>(op, "grow(num_blocks)", bigger);
              std::tie(blocks, lengths) = bm.update_block_table_plan(op, b, p, ids.data, ids.size);
              if (!lengths)
                throw py::value_error(std::string(op) + ": grow(" + str(blocks) +
                                      ") returned a buffer of " + str(ids.size) + " ids");
            }
            py::object seq_lens = lengths ? py::object(to_list(lengths, b.size)) : py::none();
            return py::make_tuple(blocks, seq_lens);
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("plan"), py::arg("stride"), py::arg("block_ids"), py::arg("grow") = py::none(),
          "First layer, as update_block_table, for a caller that keeps the tables too:\n"
          "writes the plan as RequestTable.advance does and the ids of the\n"
          "blocks the step adds, entry by entry, into block_ids. Returns (number of new\n"
          "blocks, new lengths). When they do not fit block_ids, calls grow(number) for a\n"
          "buffer that holds them and writes there; without grow, returns (that number,\n"
          "None) and nothing changed.")
      .def(
          "lookup",
          [](PyBlockBooks& bm, py::handle req_ids, py::handle num_prefill, py::handle lens,
             py::handle out_buf, py::handle stride, py::handle op_name) {
            return lookup_into(bm, bm.busy, bm.table().max_reqs(), req_ids, num_prefill, lens,
                               out_buf, stride, op_name);
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("out"), py::arg("stride"), py::arg("op") = "lookup", kLookupDoc)
      .def(
          "release_seqs",
          [](PyBlockBooks& bm, py::handle req_ids) {
            const char* op = "release_seqs";
            BusyScope busy(op, bm.busy);
            Ints ids;
            read_ints(op, "req_ids", req_ids, ids);
            bm.release_seqs(op, ids.data(), ids.size());
          },
          py::arg("req_ids"), "Releases every block of the requests; all or none.")
      .def(
          "reset_state",
          [](PyBlockBooks& bm) {
            BusyScope busy("reset_state", bm.busy);
            bm.reset_state();
          },
          "Back to empty, as after construction.")
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
      .def("check_integrity", &PyBlockBooks::check_integrity,
           "An empty string when every invariant holds, else what is wrong.");
}

}  // namespace

py::object stats_object(const BatchStats& s) { return make_stats(s); }

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
