// Python bindings of the C++ core (disagmoe._C). Only bindings live here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>

#include "block_manager.h"
#include "py_args.h"

namespace py = pybind11;
using namespace disagmoe;

namespace {

thread_local BatchArgs batch_args;
thread_local std::vector<int32_t> scratch;

int32_t* scratch_of(int64_t n) {
  if (static_cast<int64_t>(scratch.size()) < n) scratch.resize(n);
  return scratch.data();
}

py::tuple layout_tuple(const MetadataLayout& l) {
  return py::make_tuple(l.batch_size, l.width, l.num_tokens, l.slot_mapping, l.seq_lens,
                        l.context_lens, l.query_start_loc, l.seq_start_loc, l.block_tables,
                        l.nbytes);
}

void check_stride(const char* op, int64_t stride, int64_t rows, int64_t batch_size,
                  int64_t buffer_size) {
  if (stride < batch_size + 1 || rows * stride > buffer_size)
    throw py::value_error(std::string(op) + ": a buffer of " + std::to_string(buffer_size) +
                          " entries with stride " + std::to_string(stride) +
                          " cannot hold a batch of " + std::to_string(batch_size));
}

void bind_request_table(py::module_& m) {
  py::class_<RequestTable>(m, "RequestTable",
                           "Host books of running requests: id -> row, lengths, free rows.")
      .def(py::init<int64_t, int64_t, int64_t>(), py::arg("max_reqs"), py::arg("max_seq_len"),
           py::arg("page_size"))
      .def_property_readonly("max_reqs", &RequestTable::max_reqs)
      .def_property_readonly("max_seq_len", &RequestTable::max_seq_len)
      .def_property_readonly("page_size", &RequestTable::page_size)
      .def_property_readonly("num_reqs", &RequestTable::num_reqs)
      .def_property_readonly("num_free_rows", &RequestTable::num_free_rows)
      .def(
          "update_block_table",
          [](RequestTable& t, py::handle req_ids, int64_t num_prefill, py::handle lens,
             int64_t num_free_pages, py::buffer plan, int64_t stride) {
            const char* op = "update_block_table";
            BatchView b = batch_args.read(op, req_ids, num_prefill, lens);
            auto out = out_buffer<int32_t>(op, "plan", plan);
            check_stride(op, stride, 4, std::min(b.size, t.max_reqs()), out.size);
            StepPlan p{out.data, out.data + stride, out.data + 2 * stride, out.data + 3 * stride};
            int64_t pages = t.update(op, b, num_free_pages, p);
            return py::make_tuple(pages, to_list(p.new_lens, b.size));
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("num_free_pages"), py::arg("plan"), py::arg("stride"),
          "First-layer step: checks the batch, registers new requests, advances lengths.\n"
          "Writes rows, old lengths, new lengths and page offsets (B + 1 entries) at\n"
          "plan[0], plan[stride], plan[2 * stride], plan[3 * stride].\n"
          "Returns (number of new pages, new lengths as a list).")
      .def(
          "lookup",
          [](RequestTable& t, py::handle req_ids, int64_t num_prefill, py::handle lens,
             py::buffer out_buf, int64_t stride, const std::string& op_name) {
            const char* op = op_name.c_str();
            BatchView b = batch_args.read(op, req_ids, num_prefill, lens);
            auto out = out_buffer<int32_t>(op, "out", out_buf);
            check_stride(op, stride, 5, std::min(b.size, t.max_reqs()), out.size);
            BatchLookup l{out.data, out.data + stride, out.data + 2 * stride, out.data + 3 * stride,
                          out.data + 4 * stride};
            BatchStats s = t.lookup(op, b, l);
            return py::make_tuple(stats_tuple(s), to_list(l.seq_lens, b.size));
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("out"), py::arg("stride"), py::arg("op") = "lookup",
          "Reads a batch of running requests: writes rows, lengths, query lengths and the\n"
          "exclusive prefix sums of query lengths and of lengths at out[k * stride],\n"
          "k = 0..4; errors name `op`. Returns (stats, lengths as a list), stats\n"
          "being (num_tokens, max_query_len, max_seq_len, max_prefill_seq_len,\n"
          "max_decode_seq_len, max_decode_query_len).")
      .def(
          "release",
          [](RequestTable& t, py::handle req_ids) {
            std::vector<int64_t> ids;
            read_ints("release_seqs", "req_ids", req_ids, ids);
            std::vector<int32_t> rows(ids.size()), lens(ids.size());
            t.release("release_seqs", ids.data(), ids.size(), rows.data(), lens.data());
            return py::make_tuple(rows, lens);
          },
          py::arg("req_ids"), "Forgets the requests; returns (rows, lengths) they had.")
      .def("reset", &RequestTable::reset)
      .def(
          "seq_len",
          [](const RequestTable& t, int64_t req_id) {
            int32_t row = t.row_of(req_id);
            if (row < 0) throw UnknownRequest("seq_len: request id " + std::to_string(req_id) + " is not a running request");
            return t.seq_len_of_row(row);
          },
          py::arg("req_id"))
      .def("row_of", &RequestTable::row_of, py::arg("req_id"), "The request's row, or -1.")
      .def("req_ids", &RequestTable::req_ids, "Running request ids, in row order.");
}

void bind_block_manager(py::module_& m) {
  py::class_<BlockManager>(m, "BlockManager", "Paged KV-cache block manager on the host.")
      .def(py::init<int64_t, int64_t, int64_t, int64_t>(), py::arg("block_size"),
           py::arg("num_blocks"), py::arg("max_seq_len"), py::arg("max_reqs"))
      .def_property_readonly("block_size", &BlockManager::block_size)
      .def_property_readonly("num_blocks", &BlockManager::num_blocks)
      .def_property_readonly("max_blocks_per_seq", &BlockManager::max_blocks_per_seq)
      .def_property_readonly("num_reqs", [](const BlockManager& b) { return b.table().num_reqs(); })
      .def("num_free_blocks", &BlockManager::num_free_blocks)
      .def("can_allocate", &BlockManager::can_allocate, py::arg("num_tokens"),
           "Whether a new request of num_tokens tokens fits now.")
      .def("allocate", &BlockManager::allocate, py::arg("req_id"), py::arg("num_tokens"),
           "Registers a new request holding num_tokens tokens.")
      .def("append_tokens", &BlockManager::append_tokens, py::arg("req_id"),
           py::arg("num_tokens"), "Adds num_tokens tokens to a running request.")
      .def(
          "update_block_table",
          [](BlockManager& bm, py::handle req_ids, int64_t num_prefill, py::handle lens,
             bool first_layer) {
            const char* op = "update_block_table";
            BatchView b = batch_args.read(op, req_ids, num_prefill, lens);
            int32_t* seq_lens = scratch_of(b.size);
            bm.update_block_table(op, b, first_layer, seq_lens);
            return to_list(seq_lens, b.size);
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("first_layer"),
          "First layer: reserves slots for the batch's new tokens; any layer: returns the\n"
          "lengths after this step, in batch order.")
      .def(
          "prepare_block_table",
          [](BlockManager& bm, py::handle req_ids, int64_t num_prefill, py::handle lens,
             int64_t width, py::buffer block_tables, py::buffer slot_mapping) {
            const char* op = "prepare_block_table";
            BatchView b = batch_args.read(op, req_ids, num_prefill, lens);
            auto bt = out_buffer<int32_t>(op, "block_tables", block_tables);
            auto sm = out_buffer<int64_t>(op, "slot_mapping", slot_mapping);
            return stats_tuple(bm.prepare_block_table(op, b, width, bt.data, bt.size, sm.data, sm.size));
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("width"), py::arg("block_tables"), py::arg("slot_mapping"),
          "Writes the padded [B, width] int32 block table and the int64 slot of every\n"
          "query token. Returns the batch stats tuple (see RequestTable.lookup).")
      .def(
          "prepare_batch_infos",
          [](BlockManager& bm, py::handle req_ids, int64_t num_prefill, py::handle lens,
             py::buffer seq_lens, py::buffer context_lens, py::buffer query_start_loc,
             py::buffer seq_start_loc) {
            const char* op = "prepare_batch_infos";
            BatchView b = batch_args.read(op, req_ids, num_prefill, lens);
            auto s = out_buffer<int32_t>(op, "seq_lens", seq_lens);
            auto c = out_buffer<int32_t>(op, "context_lens", context_lens);
            auto q = out_buffer<int32_t>(op, "query_start_loc", query_start_loc);
            auto ss = out_buffer<int32_t>(op, "seq_start_loc", seq_start_loc);
            int64_t size = std::min({s.size + 1, c.size + 1, q.size, ss.size});
            return stats_tuple(bm.prepare_batch_infos(op, b, s.data, c.data, q.data, ss.data, size));
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("seq_lens"), py::arg("context_lens"), py::arg("query_start_loc"),
          py::arg("seq_start_loc"),
          "Writes lengths, context lengths and the exclusive prefix sums (B + 1 entries).")
      .def(
          "pack_flash_attn_metadata",
          [](BlockManager& bm, py::handle req_ids, int64_t num_prefill, py::handle lens,
             py::buffer out) {
            const char* op = "pack_flash_attn_metadata";
            BatchView b = batch_args.read(op, req_ids, num_prefill, lens);
            auto buf = out_buffer<uint8_t>(op, "out", out);
            PackResult r = bm.pack_flash_attn_metadata(op, b, buf.data, buf.size);
            py::object seq_lens = r.written
                ? py::object(to_list(reinterpret_cast<int32_t*>(buf.data + r.layout.seq_lens), b.size))
                : py::object(py::none());
            return py::make_tuple(r.written, layout_tuple(r.layout), stats_tuple(r.stats), seq_lens);
          },
          py::arg("req_ids"), py::arg("num_prefill_seqs"), py::arg("init_prefill_lens"),
          py::arg("out"),
          "Writes all metadata arrays into the byte buffer `out` as metadata_layout() lays\n"
          "them out. Returns (written, layout, stats, seq_lens); written is False, and\n"
          "nothing is written, when `out` is smaller than layout's nbytes.")
      .def(
          "release",
          [](BlockManager& bm, int64_t req_id) { bm.release("release", &req_id, 1); },
          py::arg("req_id"))
      .def(
          "batch_release",
          [](BlockManager& bm, py::handle req_ids) {
            std::vector<int64_t> ids;
            read_ints("release_seqs", "req_ids", req_ids, ids);
            bm.release("release_seqs", ids.data(), ids.size());
          },
          py::arg("req_ids"), "Releases every block of the requests; all or nothing.")
      .def("reset", &BlockManager::reset)
      .def(
          "block_ids",
          [](const BlockManager& bm, int64_t req_id) { return bm.block_ids("block_ids", req_id); },
          py::arg("req_id"))
      .def(
          "seq_len",
          [](const BlockManager& bm, int64_t req_id) {
            int32_t row = bm.table().row_of(req_id);
            if (row < 0) throw UnknownRequest("seq_len: request id " + std::to_string(req_id) + " is not a running request");
            return bm.table().seq_len_of_row(row);
          },
          py::arg("req_id"))
      .def("req_ids", [](const BlockManager& bm) { return bm.table().req_ids(); })
      .def("check_integrity", &BlockManager::check_integrity,
           "An empty string when every invariant holds, else what is wrong.");
}

}  // namespace

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
  m.def(
      "metadata_layout",
      [](int64_t batch_size, int64_t width, int64_t num_tokens) {
        return layout_tuple(metadata_layout(batch_size, width, num_tokens));
      },
      py::arg("batch_size"), py::arg("width"), py::arg("num_tokens"),
      "(batch_size, width, num_tokens, slot_mapping, seq_lens, context_lens,\n"
      "query_start_loc, seq_start_loc, block_tables, nbytes): byte offsets of the\n"
      "metadata arrays in one packed buffer.");
  bind_request_table(m);
  bind_block_manager(m);
}
