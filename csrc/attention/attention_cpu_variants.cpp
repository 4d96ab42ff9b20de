// The table of CPU attention variants (attention_cpu_variants.h).
#include "attention/attention_cpu_variants.h"

#include "cpu_variants.h"

namespace cnnext {
namespace {

// In the order of AttentionCpuVariant.
CpuVariant table[] = {
    {"attention_forward", "tiled",
     "q, k and the bias finite: query tiles against key tiles, online softmax (the usual case)"},
    {"attention_forward", "tiled_searching_scores",
     "q or k hold NaN or an infinity, or the bias NaN or +inf: as tiled, and each score row is searched so "
     "that such rows come out "
     "NaN, as SDPA's"},
    {"attention_backward", "key_tiles_per_head",
     "at least as many (batch, key/value head) pairs as threads: a task owns all key tiles of a head and its "
     "group's dQ"},
    {"attention_backward", "key_tiles_in_chunks",
     "fewer pairs than threads: a head's key tiles split into chunks, each adding into its own dQ copy, "
     "summed in chunk order"},
};

}  // namespace

void count_attention_cpu_variant(AttentionCpuVariant variant) { count_variant(table, variant); }

std::vector<CpuVariant*> attention_cpu_variants() { return entries_of(table); }

}  // namespace cnnext
