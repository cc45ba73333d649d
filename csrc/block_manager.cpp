#include "block_manager.h"

#include <algorithm>
#include <cstring>

namespace disagmoe {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

int64_t align8(int64_t n) { return (n + 7) & ~int64_t{7}; }

}  // namespace

MetadataLayout metadata_layout(int64_t batch_size, int64_t width, int64_t num_tokens) {
  MetadataLayout l;
  l.batch_size = batch_size;
  l.width = width;
  l.num_tokens = num_tokens;
  l.slot_mapping = 0;
  l.seq_lens = 8 * num_tokens;
  l.context_lens = l.seq_lens + 4 * batch_size;
  l.query_start_loc = l.context_lens + 4 * batch_size;
  l.seq_start_loc = l.query_start_loc + 4 * (batch_size + 1);
  l.block_tables = l.seq_start_loc + 4 * (batch_size + 1);
  l.nbytes = align8(l.block_tables + 4 * batch_size * width);
  return l;
}

BlockManager::BlockManager(int64_t block_size, int64_t num_blocks, int64_t max_seq_len,
                           int64_t max_reqs)
    : block_size_(block_size),
      num_blocks_(num_blocks),
      max_blocks_per_seq_(block_size < 1 ? 0 : (max_seq_len + block_size - 1) / block_size),
      table_(max_reqs, max_seq_len, block_size) {
  if (num_blocks < 1 || num_blocks > INT32_MAX / block_size)
    throw std::invalid_argument("num_blocks=" + str(num_blocks) + " must be in [1, " +
                                str(INT32_MAX / block_size) + "] for block_size=" +
                                str(block_size));
  blocks_.assign(max_reqs * max_blocks_per_seq_, kPadBlockId);
  for (auto* v : {&rows_, &old_lens_, &new_lens_, &query_lens_}) v->resize(max_reqs);
  page_offsets_.resize(max_reqs + 1);
  reset();
}

void BlockManager::reset() {
  table_.reset();
  free_blocks_.resize(num_blocks_);
  // Popping from the back hands out block 0 first.
  for (int64_t i = 0; i < num_blocks_; ++i)
    free_blocks_[i] = static_cast<int32_t>(num_blocks_ - 1 - i);
  std::fill(blocks_.begin(), blocks_.end(), kPadBlockId);
}

bool BlockManager::can_allocate(int64_t num_tokens) const {
  return num_tokens >= 1 && num_tokens <= table_.max_seq_len() && table_.num_free_rows() > 0 &&
         table_.pages_of(num_tokens) <= num_free_blocks();
}

void BlockManager::allocate(int64_t req_id, int64_t num_tokens) {
  if (table_.row_of(req_id) >= 0)
    throw std::invalid_argument("allocate: request id " + str(req_id) + " is already running");
  BatchView batch{&req_id, 1, 1, &num_tokens, 1};
  update_block_table("allocate", batch, true, new_lens_.data());
}

void BlockManager::append_tokens(int64_t req_id, int64_t num_tokens) {
  if (table_.row_of(req_id) < 0)
    throw UnknownRequest("append_tokens: request id " + str(req_id) + " is not a running request");
  BatchView batch{&req_id, 1, 1, &num_tokens, 1};
  update_block_table("append_tokens", batch, true, new_lens_.data());
}

void BlockManager::update_block_table(const char* op, const BatchView& batch, bool first_layer,
                                      int32_t* seq_lens) {
  if (!first_layer) {
    table_.lookup(op, batch, {rows_.data(), seq_lens, query_lens_.data()});
    return;
  }
  StepPlan plan{rows_.data(), old_lens_.data(), new_lens_.data(), page_offsets_.data()};
  int64_t total = table_.update(op, batch, num_free_blocks(), plan);
  // The m-th page that this step adds is the m-th from the top of the stack.
  const int64_t top = static_cast<int64_t>(free_blocks_.size()) - 1;
  for (int64_t i = 0; i < batch.size; ++i) {
    int64_t first = table_.pages_of(old_lens_[i]);
    int64_t count = table_.pages_of(new_lens_[i]) - first;
    int32_t* dst = blocks_.data() + rows_[i] * max_blocks_per_seq_ + first;
    for (int64_t k = 0; k < count; ++k) dst[k] = free_blocks_[top - page_offsets_[i] - k];
    seq_lens[i] = new_lens_[i];
  }
  free_blocks_.resize(free_blocks_.size() - total);
}

BatchStats BlockManager::lookup(const char* op, const BatchView& batch) {
  return table_.lookup(op, batch, {rows_.data(), new_lens_.data(), query_lens_.data()});
}

void BlockManager::write_block_table(const BatchView& batch, int64_t width,
                                     int32_t* block_tables, int64_t* slot_mapping) const {
  int64_t t = 0;
  for (int64_t i = 0; i < batch.size; ++i) {
    const int32_t* blocks = row_blocks(rows_[i]);
    int64_t seq_len = new_lens_[i];
    int64_t num_blocks = table_.pages_of(seq_len);
    int32_t* row = block_tables + i * width;
    std::memcpy(row, blocks, num_blocks * sizeof(int32_t));
    std::fill(row + num_blocks, row + width, kPadBlockId);
    for (int64_t p = seq_len - query_lens_[i]; p < seq_len; ++p)
      slot_mapping[t++] = static_cast<int64_t>(blocks[p / block_size_]) * block_size_ +
                          p % block_size_;
  }
}

void BlockManager::write_batch_infos(const BatchView& batch, int32_t* seq_lens,
                                     int32_t* context_lens, int32_t* query_start_loc,
                                     int32_t* seq_start_loc) const {
  int32_t q_start = 0, s_start = 0;
  for (int64_t i = 0; i < batch.size; ++i) {
    seq_lens[i] = new_lens_[i];
    context_lens[i] = new_lens_[i] - query_lens_[i];
    query_start_loc[i] = q_start;
    seq_start_loc[i] = s_start;
    q_start += query_lens_[i];
    s_start += new_lens_[i];
  }
  query_start_loc[batch.size] = q_start;
  seq_start_loc[batch.size] = s_start;
}

BatchStats BlockManager::prepare_block_table(const char* op, const BatchView& batch,
                                             int64_t width, int32_t* block_tables,
                                             int64_t block_tables_size, int64_t* slot_mapping,
                                             int64_t slot_mapping_size) {
  BatchStats stats = lookup(op, batch);
  if (width < table_.pages_of(stats.max_seq_len))
    throw std::invalid_argument(std::string(op) + ": width=" + str(width) +
                                " is below the " + str(table_.pages_of(stats.max_seq_len)) +
                                " blocks of the batch's longest request");
  if (block_tables_size < batch.size * width || slot_mapping_size < stats.num_tokens)
    throw std::invalid_argument(std::string(op) + ": the batch needs block_tables of " +
                                str(batch.size * width) + " and slot_mapping of " +
                                str(stats.num_tokens) + " entries, got " +
                                str(block_tables_size) + " and " + str(slot_mapping_size));
  write_block_table(batch, width, block_tables, slot_mapping);
  return stats;
}

BatchStats BlockManager::prepare_batch_infos(const char* op, const BatchView& batch,
                                             int32_t* seq_lens, int32_t* context_lens,
                                             int32_t* query_start_loc, int32_t* seq_start_loc,
                                             int64_t size) {
  if (size < batch.size + 1)
    throw std::invalid_argument(std::string(op) + ": the output arrays hold " + str(size) +
                                " entries, the batch needs " + str(batch.size + 1));
  BatchStats stats = lookup(op, batch);
  write_batch_infos(batch, seq_lens, context_lens, query_start_loc, seq_start_loc);
  return stats;
}

PackResult BlockManager::pack_flash_attn_metadata(const char* op, const BatchView& batch,
                                                  uint8_t* out, int64_t capacity) {
  PackResult r;
  r.stats = lookup(op, batch);
  r.layout = metadata_layout(batch.size, table_.pages_of(r.stats.max_seq_len),
                             r.stats.num_tokens);
  r.written = r.layout.nbytes <= capacity;
  if (!r.written) return r;
  const MetadataLayout& l = r.layout;
  auto i32 = [out](int64_t offset) { return reinterpret_cast<int32_t*>(out + offset); };
  write_batch_infos(batch, i32(l.seq_lens), i32(l.context_lens), i32(l.query_start_loc),
                    i32(l.seq_start_loc));
  write_block_table(batch, l.width, i32(l.block_tables),
                    reinterpret_cast<int64_t*>(out + l.slot_mapping));
  return r;
}

void BlockManager::release(const char* op, const int64_t* req_ids, int64_t n) {
  std::vector<int32_t> rows(n), lens(n);
  table_.release(op, req_ids, n, rows.data(), lens.data());
  for (int64_t i = 0; i < n; ++i) {
    int32_t* blocks = blocks_.data() + static_cast<int64_t>(rows[i]) * max_blocks_per_seq_;
    int64_t count = table_.pages_of(lens[i]);
    free_blocks_.insert(free_blocks_.end(), blocks, blocks + count);
    std::fill(blocks, blocks + count, kPadBlockId);
  }
}

std::vector<int32_t> BlockManager::block_ids(const char* op, int64_t req_id) const {
  int32_t row = table_.row_of(req_id);
  if (row < 0)
    throw UnknownRequest(std::string(op) + ": request id " + str(req_id) +
                         " is not a running request");
  const int32_t* blocks = row_blocks(row);
  return std::vector<int32_t>(blocks, blocks + table_.pages_of(table_.seq_len_of_row(row)));
}

std::string BlockManager::check_integrity() const {
  std::vector<int8_t> owner(num_blocks_, 0);  // 1: free, 2: owned by a request
  auto claim = [&](int32_t block, int8_t who, const std::string& where) -> std::string {
    if (block < 0 || block >= num_blocks_) return where + " holds block " + str(block) + ", out of range";
    if (owner[block] != 0) return "block " + str(block) + " is both " + (owner[block] == 1 ? "free" : "owned") + " and in " + where;
    owner[block] = who;
    return "";
  };
  for (int32_t block : free_blocks_) {
    std::string err = claim(block, 1, "the free list");
    if (!err.empty()) return err;
  }
  int64_t owned = 0;
  for (int64_t req_id : table_.req_ids()) {
    int32_t row = table_.row_of(req_id);
    int64_t count = table_.pages_of(table_.seq_len_of_row(row));
    const int32_t* blocks = row_blocks(row);
    for (int64_t k = 0; k < count; ++k) {
      std::string err = claim(blocks[k], 2, "request " + str(req_id));
      if (!err.empty()) return err;
    }
    for (int64_t k = count; k < max_blocks_per_seq_; ++k)
      if (blocks[k] != kPadBlockId)
        return "request " + str(req_id) + " has block " + str(blocks[k]) + " past its last block";
    owned += count;
  }
  if (table_.num_reqs() + table_.num_free_rows() != table_.max_reqs())
    return str(table_.num_reqs()) + " live + " + str(table_.num_free_rows()) +
           " free request rows != " + str(table_.max_reqs());
  if (owned + num_free_blocks() != num_blocks_)
    return str(owned) + " owned + " + str(num_free_blocks()) + " free blocks != " +
           str(num_blocks_) + " blocks";
  return "";
}

}  // namespace disagmoe
