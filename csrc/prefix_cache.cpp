#include "prefix_cache.h"

#include <algorithm>
#include <stdexcept>

namespace disagmoe {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
}  // namespace

PrefixCache::PrefixCache(int64_t num_entries)
    : entries_((num_entries >= 1 && num_entries <= INT32_MAX) ? num_entries : 0),
      index_((num_entries >= 1 && num_entries <= INT32_MAX) ? num_entries : 0) {
  if (num_entries < 1 || num_entries > INT32_MAX)
    throw std::invalid_argument("PrefixCache: num_entries=" + str(num_entries) +
                                " must be in [1, " + str(INT32_MAX) + "]");
}

void PrefixCache::reset() {
  std::fill(entries_.begin(), entries_.end(), Entry{});
  index_.clear();
  head_ = tail_ = -1;
  evictable_ = 0;
  stats_ = PrefixCacheStats{};
}

int64_t PrefixCache::count_hits(const int64_t* hashes, int64_t n) const {
  int64_t m = 0;
  while (m < n && index_.find(hashes[m]) >= 0) ++m;
  return m;
}

void PrefixCache::unlink(int32_t entry) {
  Entry& e = entries_[entry];
  (e.prev >= 0 ? entries_[e.prev].next : head_) = e.next;
  (e.next >= 0 ? entries_[e.next].prev : tail_) = e.prev;
  e.prev = e.next = -1;
  --evictable_;
}

void PrefixCache::acquire(const int64_t* hashes, int64_t m, int32_t* out) {
  for (int64_t k = 0; k < m; ++k) {
    int32_t entry = index_.find(hashes[k]);
    if (entries_[entry].refs++ == 0) unlink(entry);
    out[k] = entry;
  }
}

bool PrefixCache::insert(int64_t hash, int32_t entry) {
  if (index_.find(hash) >= 0) return false;
  Entry& e = entries_[entry];
  e.hash = hash;
  e.refs = 1;
  e.indexed = true;
  index_.insert(hash, entry);
  return true;
}

bool PrefixCache::release(int32_t entry) {
  Entry& e = entries_[entry];
  if (!e.indexed) return false;
  if (--e.refs == 0) {
    e.prev = tail_;
    e.next = -1;
    (tail_ >= 0 ? entries_[tail_].next : head_) = entry;
    tail_ = entry;
    ++evictable_;
  }
  return true;
}

int32_t PrefixCache::evict() {
  int32_t entry = head_;
  unlink(entry);
  Entry& e = entries_[entry];
  index_.erase(e.hash);
  e = Entry{};
  ++stats_.evicted_blocks;
  return entry;
}

PrefixCacheStats PrefixCache::stats() const {
  PrefixCacheStats s = stats_;
  s.cached_blocks = index_.size();
  s.evictable_blocks = evictable_;
  return s;
}

std::string PrefixCache::check_integrity(const std::vector<int32_t>& holders,
                                         const std::vector<int8_t>& is_free) const {
  int64_t n = static_cast<int64_t>(entries_.size());
  std::vector<int8_t> in_lru(n, 0);
  int64_t walked = 0;
  for (int32_t e = head_, prev = -1; e >= 0; prev = e, e = entries_[e].next) {
    if (e >= n || in_lru[e]) return "the LRU of evictable blocks has a cycle or a bad link";
    if (entries_[e].prev != prev) return "the LRU's links disagree at block " + str(e);
    in_lru[e] = 1;
    ++walked;
  }
  if (walked != evictable_)
    return "the LRU holds " + str(walked) + " blocks, its count says " + str(evictable_);
  int64_t indexed = 0;
  for (int64_t e = 0; e < n; ++e) {
    const Entry& entry = entries_[e];
    if (!entry.indexed) {
      if (in_lru[e]) return "block " + str(e) + " is evictable but not indexed";
      continue;
    }
    ++indexed;
    if (index_.find(entry.hash) != e)
      return "block " + str(e) + " is indexed under hash " + str(entry.hash) + ", which names " +
             str(index_.find(entry.hash));
    if (entry.refs != holders[e])
      return "block " + str(e) + " has " + str(entry.refs) + " references, " + str(holders[e]) +
             " rows hold it";
    if (is_free[e]) return "block " + str(e) + " is indexed and free";
    if ((entry.refs == 0) != (in_lru[e] == 1))
      return "block " + str(e) +
             (entry.refs == 0 ? " has no holder but is not evictable" : " is held and evictable");
  }
  if (indexed != index_.size())
    return "the index holds " + str(index_.size()) + " hashes for " + str(indexed) + " blocks";
  return "";
}

}  // namespace disagmoe
