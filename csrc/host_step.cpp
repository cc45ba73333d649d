#include "host_step.h"

#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>

#include "sizes.h"

namespace disagmoe {

HostStep::HostStep(BlockBooks& core, int64_t depth, int device)
    : Step(core.table(), depth, device), core_(core), pitch_(core.max_blocks_per_seq()) {
  buffers_.resize(depth_);
}

void HostStep::set_buffer(int64_t k, int32_t* table, int64_t table_bytes, uint8_t* head,
                          int64_t head_bytes) {
  check_range("HostStep.set_buffer", "k", k, 0, depth_ - 1);
  int64_t needed = 4 * table_.max_reqs() * pitch_;  // (the books' tables are as large)
  if (table_bytes < needed)
    throw std::invalid_argument("HostStep.set_buffer: a table of " + str(table_bytes) +
                                " bytes cannot hold " + str(table_.max_reqs()) + " rows of " +
                                str(pitch_) + " block ids (" + str(needed) + " bytes)");
  buffers_[k] = {table, head, head_bytes};
}

void HostStep::set_out(uint8_t* out, int64_t nbytes) {
  out_ = out;
  out_bytes_ = nbytes;
  forget_pack();
}

void HostStep::commit(const char* op) {
  check_planned(op);
  core_.commit_first_layer(planned_batch(), planned_steps(), plan_total_, nullptr);
  committed();
}

PackOutcome HostStep::pack(const char* op, const BatchView& batch, int64_t layer,
                           cuda::Stream stream, int64_t known) {
  PackOutcome o;
  uint64_t version = table_.version();
  if (remembered(batch, layer, version, known, o)) return o;
  o.stats = just_committed(batch) ? core_.lookup_planned(batch, planned_steps())
                                  : core_.lookup_for_pack(op, batch);
  MetadataLayout l = metadata_layout(batch.size, o.stats.width, o.stats.num_tokens);
  std::optional<cuda::ContextScope> scope;
  if (on_cuda()) scope.emplace(*ctx_);
  wait_current();  // (before a buffer is grown: its last copy is done)
  int64_t table_bytes = l.nbytes - l.block_tables;
  int64_t head = l.block_tables + (on_cuda() && table_bytes <= kCompactBytes ? table_bytes : 0);
  if (head > buffers_[current_].head_bytes) grow(op, "host", head);
  if (l.nbytes > out_bytes_) grow(op, "device", l.nbytes);
  Buffer& b = buffers_[current_];
  if (head > b.head_bytes || l.nbytes > out_bytes_)
    throw std::runtime_error(std::string(op) + ": grow() left a buffer too small");
  core_.write_metadata(batch, l, b.head, b.table, pitch_, current_);
  send(l, stream);
  advance(stream);
  o.pack_id = ++packs_;
  o.seq_lens = core_.packed_lengths();
  memo_.remember(batch, o.seq_lens, layer, version);
  return o;
}

void HostStep::send(const MetadataLayout& l, cuda::Stream stream) {
  const Buffer& b = buffers_[current_];
  int64_t rows = l.batch_size, width = l.width;
  if (!on_cuda()) {
    std::memcpy(out_, b.head, l.block_tables);
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(out_ + l.block_tables + 4 * i * width, b.table + i * pitch_, 4 * width);
    return;
  }
  const cuda::Api& a = cuda::api();
  follow_last(stream);
  auto device = reinterpret_cast<cuda::DevicePtr>(out_);
  if (l.nbytes - l.block_tables <= kCompactBytes) {  // the rows gathered after the rest: one copy
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(b.head + l.block_tables + 4 * i * width, b.table + i * pitch_, 4 * width);
    cuda::check(a.memcpy_htod_async(device, b.head, l.nbytes, stream), "cuMemcpyHtoDAsync");
    return;
  }
  cuda::check(a.memcpy_htod_async(device, b.head, l.block_tables, stream), "cuMemcpyHtoDAsync");
  if (rows > 0 && width > 0) {
    cuda::Copy2D c{};
    c.src_memory_type = cuda::kHostMemory;
    c.src_host = b.table;
    c.src_pitch = 4 * pitch_;
    c.dst_memory_type = cuda::kDeviceMemory;
    c.dst_device = device + l.block_tables;
    c.dst_pitch = 4 * width;
    c.width_bytes = 4 * width;
    c.height = rows;
    cuda::check(a.memcpy_2d_async(&c, stream), "cuMemcpy2DAsync");
  }
}

void HostStep::release(const char* op, const int64_t* req_ids, int64_t n) {
  core_.release_seqs(op, req_ids, n);
}

void HostStep::reset() {
  core_.reset_state();
  restart();
}

}  // namespace disagmoe
