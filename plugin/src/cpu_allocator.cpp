// A caching allocator for libtorch's CPU tensors.
//
// libtorch allocates every activation afresh and frees it at the end of the forward pass.
// glibc serves blocks of tens of MB with mmap (and, on any thread but the main one, from
// per-thread arenas whose heaps are unmapped again once empty), so every batch pays page
// faults to map and zero its activations anew: measured here, the inference thread ran the
// model at 30-40 % of its speed on the main thread. This allocator keeps freed large blocks
// and hands them back for the next batch, which asks for the same sizes in the same order.
//
// The host's own malloc is untouched: only allocations libtorch makes for CPU tensors come
// through here. Cached memory is bounded: past the limit, cached blocks go back to the system.

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>

namespace {

// Smaller blocks are not cached: malloc keeps them in its free lists anyway.
constexpr size_t kSmallestCached = 64 * 1024;
// posix_memalign alignment: a cache line, and enough for every vector unit libtorch uses.
constexpr size_t kAlignment = 64;

// Rounds a size up to one of eight steps per power of two, so blocks of nearby sizes can be
// reused for one another at a cost of at most 12.5 % of a block.
//
// A request takes the smallest cached block that holds it, up to twice its size: batches of
// different sizes (a flush, a live link that fills batches only partly) then share blocks
// instead of each caching its own.
size_t size_class(size_t bytes) {
  size_t power = kSmallestCached;
  while (power < bytes / 2 && power <= SIZE_MAX / 4) {
    power *= 2;
  }
  size_t step = power / 8;
  return (bytes + step - 1) / step * step;
}

struct Counters {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t released = 0;
  size_t cached_bytes = 0;
  size_t live_bytes = 0;
  size_t peak_live_bytes = 0;
};

class CachingCpuAllocator final : public c10::Allocator {
 public:
  CachingCpuAllocator() = default;

  c10::DataPtr allocate(size_t bytes) override {
    void* block = bytes < kSmallestCached ? allocate_small(bytes) : take(size_class(bytes));
    if (block == nullptr) {
      throw std::bad_alloc();
    }
    return {block, block, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // oneDNN allocates through the raw interface, which needs one deleter for every block.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Engines share the process's allocator: while several use it, the largest limit any of
  // them asked for holds; when the last one leaves, the cache is emptied.
  void join(size_t limit_bytes) {
    std::lock_guard<std::mutex> guard(mutex_);
    limits_.insert(limit_bytes);
    apply_limits();
  }

  void leave(size_t limit_bytes) {
    std::lock_guard<std::mutex> guard(mutex_);
    auto found = limits_.find(limit_bytes);
    if (found != limits_.end()) {
      limits_.erase(found);
    }
    apply_limits();
  }

  void reset_peak() {
    std::lock_guard<std::mutex> guard(mutex_);
    counters_.peak_live_bytes = counters_.live_bytes;
  }

  Counters counters() {
    std::lock_guard<std::mutex> guard(mutex_);
    return counters_;
  }

  static void release(void* block) { instance->give_back(block); }

  static CachingCpuAllocator* instance;

 private:
  static void* allocate_small(size_t bytes) {
    void* block = nullptr;
    // posix_memalign may return NULL for 0 bytes; tensors of no elements still want a pointer.
    if (posix_memalign(&block, kAlignment, bytes == 0 ? 1 : bytes) != 0) {
      return nullptr;
    }
    return block;
  }

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      auto found = free_.lower_bound(bytes);
      if (found != free_.end() && found->first / 2 <= bytes) {
        size_t block_bytes = found->first;
        void* block = found->second;
        free_.erase(found);
        counters_.hits += 1;
        counters_.cached_bytes -= block_bytes;
        note_live(block_bytes);
        sizes_[block] = block_bytes;
        return block;
      }
      counters_.misses += 1;
      // A new block would hold more than the limit between cache and this request: give
      // back cached blocks of other sizes first.
      if (counters_.cached_bytes + bytes > limit_bytes_) {
        trim_to(limit_bytes_ > bytes ? limit_bytes_ - bytes : 0);
      }
    }
    void* block = nullptr;
    if (posix_memalign(&block, kAlignment, bytes) != 0) {
      return nullptr;
    }
    std::lock_guard<std::mutex> guard(mutex_);
    note_live(bytes);
    sizes_[block] = bytes;
    return block;
  }

  // Caller holds the mutex.
  void apply_limits() {
    limit_bytes_ = limits_.empty() ? 0 : *limits_.rbegin();
    trim_to(limit_bytes_);
  }

  // Caller holds the mutex.
  void note_live(size_t bytes) {
    counters_.live_bytes += bytes;
    if (counters_.live_bytes > counters_.peak_live_bytes) {
      counters_.peak_live_bytes = counters_.live_bytes;
    }
  }

  void give_back(void* block) {
    std::lock_guard<std::mutex> guard(mutex_);
    auto found = sizes_.find(block);
    if (found == sizes_.end()) {
      // A small block: never cached, so never recorded.
      std::free(block);
      return;
    }
    size_t bytes = found->second;
    sizes_.erase(found);
    counters_.live_bytes -= bytes;
    if (counters_.cached_bytes + bytes > limit_bytes_) {
      std::free(block);
      counters_.released += 1;
      return;
    }
    free_.emplace(bytes, block);
    counters_.cached_bytes += bytes;
  }

  // Frees cached blocks, largest first, until at most `target` bytes stay cached. Caller
  // holds the mutex.
  void trim_to(size_t target) {
    while (counters_.cached_bytes > target && !free_.empty()) {
      auto largest = std::prev(free_.end());
      std::free(largest->second);
      counters_.cached_bytes -= largest->first;
      counters_.released += 1;
      free_.erase(largest);
    }
  }

  std::mutex mutex_;
  // Cached blocks by size.
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> sizes_;
  Counters counters_;
  // The limit of every user (engine, command) now using the cache.
  std::multiset<size_t> limits_;
  size_t limit_bytes_ = 0;
};

CachingCpuAllocator* CachingCpuAllocator::instance = nullptr;
std::once_flag installed;

}  // namespace

extern "C" {

// Makes the caching allocator libtorch's CPU allocator (once per process) and registers a
// user that lets it keep up to `limit_bytes` of freed blocks; each successful call is paired
// with one `combo_cpu_allocator_leave` with the same limit. Returns 0 on success, 1 if
// libtorch refused it (no user is registered then).
int combo_cpu_allocator_install(size_t limit_bytes) {
  try {
    std::call_once(installed, [] {
      // Never destroyed: tensors may be freed during process exit, after static destructors.
      CachingCpuAllocator::instance = new CachingCpuAllocator();
      // Above the default allocator's priority (0), so libtorch uses ours from now on.
      c10::SetCPUAllocator(CachingCpuAllocator::instance, 1);
    });
    if (c10::GetCPUAllocator() != CachingCpuAllocator::instance) {
      return 1;
    }
    CachingCpuAllocator::instance->join(limit_bytes);
    return 0;
  } catch (...) {
    return 1;
  }
}

// Counters since installation; all zero when not installed.
// Ends a user registered by `combo_cpu_allocator_install` with this limit.
void combo_cpu_allocator_leave(size_t limit_bytes) {
  if (CachingCpuAllocator::instance != nullptr) {
    CachingCpuAllocator::instance->leave(limit_bytes);
  }
}

// Starts measuring the peak of live bytes afresh.
void combo_cpu_allocator_reset_peak() {
  if (CachingCpuAllocator::instance != nullptr) {
    CachingCpuAllocator::instance->reset_peak();
  }
}

// Counters since installation, in the order of `Counters`; all zero when not installed.
void combo_cpu_allocator_counters(uint64_t out[6]) {
  Counters counters;
  if (CachingCpuAllocator::instance != nullptr) {
    counters = CachingCpuAllocator::instance->counters();
  }
  out[0] = counters.hits;
  out[1] = counters.misses;
  out[2] = counters.released;
  out[3] = counters.cached_bytes;
  out[4] = counters.live_bytes;
  out[5] = counters.peak_live_bytes;
}

}  // extern "C"
