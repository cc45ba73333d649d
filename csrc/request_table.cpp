#include "request_table.h"

#include <algorithm>
#include <new>

#include "sizes.h"

namespace disagmoe {

std::string entry_name(const BatchView& batch, int64_t i) {
  return "req_ids[" + str(i) + "]=" + str(batch.req_ids[i]) +
         (i < batch.num_prefill ? " (prefill entry)" : " (decode entry)");
}

void copy_plan(const StepPlan& from, const StepPlan& to, int64_t size) {
  std::copy(from.rows, from.rows + size, to.rows);
  std::copy(from.old_lens, from.old_lens + size, to.old_lens);
  std::copy(from.new_lens, from.new_lens + size, to.new_lens);
  std::copy(from.block_offsets, from.block_offsets + size + 1, to.block_offsets);
}

int64_t RequestTable::host_bytes(int64_t max_reqs) {
  // id_of_row_ and new_entries_: 8 bytes a row; seq_lens_, free_rows_, seen_: 4; the id map.
  return 28 * max_reqs + 12 * static_cast<int64_t>(FlatIdMap::capacity_for(max_reqs));
}

int64_t RequestTable::checked_max_reqs(int64_t max_reqs, int64_t max_seq_len, int64_t block_size) {
  check_range("RequestTable", "max_reqs", max_reqs, 1, kMaxInt32);
  check_range("RequestTable", "max_seq_len", max_seq_len, 1, kMaxInt32);
  check_range("RequestTable", "block_size", block_size, 1, kMaxInt32);
  check_host_bytes("RequestTable", "the books of max_reqs=" + str(max_reqs) + " request rows",
                   host_bytes(max_reqs));
  return max_reqs;
}

RequestTable::RequestTable(int64_t max_reqs, int64_t max_seq_len, int64_t block_size) try
    : max_reqs_(checked_max_reqs(max_reqs, max_seq_len, block_size)),
      max_seq_len_(max_seq_len),
      block_size_(block_size),
      block_shift_((block_size & (block_size - 1)) == 0 ? __builtin_ctzll(block_size) : -1),
      ids_(max_reqs) {
  id_of_row_.resize(max_reqs);
  seq_lens_.resize(max_reqs);
  seen_.resize(max_reqs);
  new_entries_.reserve(max_reqs);
  reset_state();
} catch (const std::bad_alloc&) {
  throw std::invalid_argument(
      "RequestTable: cannot allocate the books of max_reqs=" + str(max_reqs) + " request rows (" +
      str(host_bytes(max_reqs)) + " bytes)");
}

void RequestTable::reset_state() {
  ++version_;
  ids_.clear();
  std::fill(seq_lens_.begin(), seq_lens_.end(), 0);
  free_rows_.resize(max_reqs_);
  // A stack: row 0 is handed out first.
  for (int64_t i = 0; i < max_reqs_; ++i) free_rows_[i] = static_cast<int32_t>(max_reqs_ - 1 - i);
}

std::vector<int64_t> RequestTable::req_ids() const {
  std::vector<int64_t> out;
  for (int64_t row = 0; row < max_reqs_; ++row)
    if (seq_lens_[row] > 0 || ids_.find(id_of_row_[row]) == row) out.push_back(id_of_row_[row]);
  return out;
}

void RequestTable::check_shape(const char* op, const BatchView& batch) const {
  if (batch.num_prefill < 0 || batch.num_prefill > batch.size)
    throw std::invalid_argument(std::string(op) + ": num_prefill_seqs=" + str(batch.num_prefill) +
                                " is outside [0, len(req_ids)=" + str(batch.size) + "]");
  if (batch.num_prefill_lens != batch.num_prefill)
    throw std::invalid_argument(std::string(op) +
                                ": len(init_prefill_lens)=" + str(batch.num_prefill_lens) +
                                " differs from num_prefill_seqs=" + str(batch.num_prefill));
  for (int64_t i = 0; i < batch.num_prefill; ++i)
    if (batch.prefill_lens[i] < 1)
      throw std::invalid_argument(std::string(op) + ": init_prefill_lens[" + str(i) +
                                  "]=" + str(batch.prefill_lens[i]) + " is below 1 (for " +
                                  entry_name(batch, i) + ")");
}

void RequestTable::throw_repeated(const char* op, const BatchView& batch, int64_t i) {
  throw std::invalid_argument(std::string(op) + ": request id " + str(batch.req_ids[i]) +
                              " appears more than once in req_ids (again at index " + str(i) + ")");
}

void RequestTable::check_new_ids_distinct(const char* op, const BatchView& batch) const {
  if (new_entries_.size() < 2) return;
  std::vector<int64_t> ids;
  ids.reserve(new_entries_.size());
  for (int64_t i : new_entries_) ids.push_back(batch.req_ids[i]);
  std::sort(ids.begin(), ids.end());
  auto dup = std::adjacent_find(ids.begin(), ids.end());
  if (dup != ids.end())
    throw std::invalid_argument(std::string(op) + ": request id " + str(*dup) +
                                " appears more than once in req_ids");
}

// A decode entry of a request the books do not hold: a repeat of a new prefill
// entry (ValueError), else an unknown request (KeyError).
void RequestTable::throw_unknown(const char* op, const BatchView& batch, int64_t i) const {
  for (int64_t j : new_entries_)
    if (batch.req_ids[j] == batch.req_ids[i]) throw_repeated(op, batch, i);
  throw UnknownRequest(std::string(op) + ": " + entry_name(batch, i) + " is not a running request");
}

static void next_stamp(uint32_t& stamp, std::vector<uint32_t>& seen) {
  if (++stamp == 0) {
    std::fill(seen.begin(), seen.end(), 0);
    stamp = 1;
  }
}

int64_t RequestTable::plan_update(const char* op, const BatchView& batch, int64_t num_free_blocks,
                                  const StepPlan& plan) {
  check_shape(op, batch);
  check_range(op, "num_free_blocks", num_free_blocks, 0, kMaxInt32);
  next_stamp(stamp_, seen_);
  new_entries_.clear();
  // A batch that does not fit is reported only once it is known to be well formed:
  // KVCacheExhausted asks the caller to retry later, which a malformed batch never passes.
  int64_t too_long = -1;  // the first entry that max_seq_len cannot hold
  int64_t total_blocks = 0;
  for (int64_t i = 0; i < batch.size; ++i) {
    int32_t row = ids_.find(batch.req_ids[i]);
    int64_t old_len = 0;
    if (row < 0) {
      if (i >= batch.num_prefill) throw_unknown(op, batch, i);
      new_entries_.push_back(i);
    } else {
      mark_once(op, batch, i, row);
      old_len = seq_lens_[row];
    }
    int64_t q = query_len(batch, i);
    if (q > max_seq_len_ - old_len) {  // old_len + q would pass max_seq_len (or int64)
      if (too_long < 0) too_long = i;
      continue;
    }
    if (i >= max_reqs_) continue;  // past the plan: the rows cannot hold this batch
    int64_t new_len = old_len + q;
    plan.rows[i] = row;
    plan.old_lens[i] = static_cast<int32_t>(old_len);
    plan.new_lens[i] = static_cast<int32_t>(new_len);
    plan.block_offsets[i] = static_cast<int32_t>(total_blocks);
    total_blocks += blocks_of(new_len) - blocks_of(old_len);
  }
  check_new_ids_distinct(op, batch);
  if (too_long >= 0) {
    int32_t row = ids_.find(batch.req_ids[too_long]);
    int64_t old_len = row < 0 ? 0 : seq_lens_[row], q = query_len(batch, too_long), sum;
    std::string tokens =
        __builtin_add_overflow(old_len, q, &sum) ? str(old_len) + " + " + str(q) : str(sum);
    throw CacheExhausted(std::string(op) + ": " + entry_name(batch, too_long) + " would hold " +
                         tokens + " tokens, over max_seq_len=" + str(max_seq_len_));
  }
  if (batch.size > max_reqs_)
    throw CacheExhausted(std::string(op) + ": the batch holds " + str(batch.size) +
                         " requests but there are only " + str(max_reqs_) + " request rows");
  if (static_cast<int64_t>(new_entries_.size()) > num_free_rows())
    throw CacheExhausted(std::string(op) + ": the batch starts " + str(new_entries_.size()) +
                         " new requests but only " + str(num_free_rows()) + " of " +
                         str(max_reqs_) + " request rows are free");
  if (total_blocks > num_free_blocks)
    throw CacheExhausted(std::string(op) + ": the batch needs " + str(total_blocks) +
                         " free blocks of " + str(block_size_) + " slots but only " +
                         str(num_free_blocks) + " are free");
  plan.block_offsets[batch.size] = static_cast<int32_t>(total_blocks);
  return total_blocks;
}

void RequestTable::commit_update(const BatchView& batch, const StepPlan& plan) {
  if (batch.size > 0) ++version_;
  for (int64_t i = 0; i < batch.size; ++i) {
    if (plan.rows[i] < 0) {  // a new request
      int32_t row = free_rows_.back();
      free_rows_.pop_back();
      ids_.insert(batch.req_ids[i], row);
      id_of_row_[row] = batch.req_ids[i];
      plan.rows[i] = row;
    }
    seq_lens_[plan.rows[i]] = plan.new_lens[i];
  }
}

void RequestTable::check_match(const char* op, int64_t req_id, int64_t n) const {
  int64_t max_hashes = (max_seq_len() - 1) / block_size();
  if (n > max_hashes)
    throw std::invalid_argument(
        std::string(op) + ": len(block_hashes)=" + str(n) +
        " is more than (max_seq_len - 1) // block_size = " + str(max_hashes));
  if (row_of(req_id) >= 0)
    throw std::invalid_argument(std::string(op) + ": req_id=" + str(req_id) +
                                " is already known (match_prefix comes once, before the "
                                "request's first update)");
  if (num_free_rows() == 0)
    throw CacheExhausted(std::string(op) + ": req_id=" + str(req_id) + ": all " + str(max_reqs()) +
                         " request rows are taken");
}

int32_t RequestTable::register_request(int64_t req_id, int64_t seq_len) {
  ++version_;
  int32_t row = free_rows_.back();
  free_rows_.pop_back();
  ids_.insert(req_id, row);
  id_of_row_[row] = req_id;
  seq_lens_[row] = static_cast<int32_t>(seq_len);
  return row;
}

namespace {

// One entry into a lookup's output and stats (what lookup and lookup_planned share).
struct StatsBuilder {
  BatchStats stats;
  int64_t seq_total = 0;
  void add(const BatchView& batch, const BatchLookup& out, int64_t i, int32_t row, int64_t seq_len,
           int64_t q) {
    out.rows[i] = row;
    out.seq_lens[i] = static_cast<int32_t>(seq_len);
    out.query_lens[i] = static_cast<int32_t>(q);
    if (out.query_starts) {
      out.query_starts[i] = static_cast<int32_t>(stats.num_tokens);
      out.seq_starts[i] = static_cast<int32_t>(seq_total);
    }
    seq_total += seq_len;
    stats.num_tokens += q;
    stats.max_query_len = std::max(stats.max_query_len, q);
    stats.max_seq_len = std::max(stats.max_seq_len, seq_len);
    if (i < batch.num_prefill) {
      stats.max_prefill_seq_len = std::max(stats.max_prefill_seq_len, seq_len);
    } else {
      stats.max_decode_seq_len = std::max(stats.max_decode_seq_len, seq_len);
      stats.max_decode_query_len = 1;
    }
  }
  BatchStats finish(const char* op, const BatchView& batch, int64_t block_size) {
    // The prefix sums are int32. Distinct requests of one pool never pass this; a
    // RequestTable told of more free blocks than a pool holds could.
    if (seq_total > kMaxInt32)
      throw std::invalid_argument(std::string(op) + ": the batch's lengths sum to " +
                                  str(seq_total) + ", past the int32 range of seq_start_loc");
    stats.batch_size = batch.size;
    stats.num_prefills = batch.num_prefill;
    stats.num_decode_tokens = batch.size - batch.num_prefill;
    stats.num_prefill_tokens = stats.num_tokens - stats.num_decode_tokens;
    stats.width = (stats.max_seq_len + block_size - 1) / block_size;
    return stats;
  }
};

}  // namespace

// Writes at most max_reqs entries: the entry past them cannot be a distinct running
// request, so the loop throws before writing it.
BatchStats RequestTable::lookup(const char* op, const BatchView& batch, const BatchLookup& out) {
  check_shape(op, batch);
  next_stamp(stamp_, seen_);
  StatsBuilder b;
  for (int64_t i = 0; i < batch.size; ++i) {
    int32_t row = ids_.find(batch.req_ids[i]);
    if (row < 0)
      throw UnknownRequest(std::string(op) + ": " + entry_name(batch, i) +
                           " is not a running request");
    mark_once(op, batch, i, row);
    int64_t seq_len = seq_lens_[row];
    int64_t q = query_len(batch, i);
    if (q > seq_len)
      throw std::invalid_argument(std::string(op) + ": " + entry_name(batch, i) + " queries " +
                                  str(q) + " tokens but the request holds only " + str(seq_len));
    b.add(batch, out, i, row, seq_len, q);
  }
  return b.finish(op, batch, block_size_);
}

BatchStats RequestTable::lookup_planned(const BatchView& batch, const StepPlan& plan,
                                        const BatchLookup& out) const {
  StatsBuilder b;
  for (int64_t i = 0; i < batch.size; ++i)
    b.add(batch, out, i, plan.rows[i], plan.new_lens[i], query_len(batch, i));
  return b.finish("lookup", batch, block_size_);
}

void RequestTable::release_seqs(const char* op, const int64_t* req_ids, int64_t n, int32_t* rows,
                                int32_t* lens) {
  next_stamp(stamp_, seen_);
  for (int64_t i = 0; i < n; ++i) {
    int32_t row = ids_.find(req_ids[i]);
    if (row < 0)
      throw UnknownRequest(std::string(op) + ": request id " + str(req_ids[i]) +
                           " is not a running request");
    if (seen_[row] == stamp_)
      throw std::invalid_argument(std::string(op) + ": request id " + str(req_ids[i]) +
                                  " appears more than once");
    seen_[row] = stamp_;
    rows[i] = row;
    lens[i] = seq_lens_[row];
  }
  if (n > 0) ++version_;
  for (int64_t i = 0; i < n; ++i) {
    ids_.erase(req_ids[i]);
    seq_lens_[rows[i]] = 0;
    free_rows_.push_back(rows[i]);
  }
}

}  // namespace disagmoe
