// The assemble stage of `duquant pack` (pack_stages.hpp): quantized.safetensors from the layers'
// .part files.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <memory>
#include <span>

#include "duquant/error.hpp"
#include "formats/digest.hpp"
#include "formats/safetensors_writer.hpp"
#include "formats/strict_json.hpp"
#include "pack/pack_stages.hpp"
#include "pack_internal.hpp"
#include "packfmt/layout.hpp"

namespace duquant {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

struct Shard {
  std::string name;
  std::vector<std::size_t> layers;
};

std::vector<formats::TensorSpec> tensors_of(const PackRun& run, std::size_t i, const LayerRecord& r) {
  const SelectedLayer& sel = run.source.selection.layers[i];
  return layer_tensor_specs(*sel.layer, sel.wbits, run.options.config.quant, r.calibration.steps > 0, r.smoothed);
}
std::vector<formats::TensorSpec> tensors_of(const PackRun& run, const PackState& state, std::size_t i) {
  return tensors_of(run, i, *state.records[i]);
}

// The tensors a layer will have, from the configuration and the calibration plan alone.
std::vector<formats::TensorSpec> planned_tensors(const PackRun& run, std::size_t i) {
  const SelectedLayer& sel = run.source.selection.layers[i];
  const LayerCalibration c = run.plan.for_layer(*sel.layer);
  const int steps =
      c.has_calls() ? static_cast<int>(std::min<std::size_t>(
                          c.calls->size(), static_cast<std::size_t>(std::max(0, run.options.config.quant.calib_steps))))
                    : 0;
  return layer_tensor_specs(*sel.layer, sel.wbits, run.options.config.quant, steps > 0, !c.smooth.empty());
}

bool same_specs(const std::vector<formats::TensorSpec>& a, const std::vector<formats::TensorSpec>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t k = 0; k < a.size(); ++k)
    if (a[k].name != b[k].name || a[k].dtype != b[k].dtype || a[k].shape != b[k].shape) return false;
  return true;
}

// Layers are never split across shards; a shard ends before --max-shard-size or before a header
// over the readers' limit (about 600,000 tensors of a 100,000-layer pack).
std::vector<Shard> plan_shards(const PackRun& run, const PackState& state) {
  std::vector<Shard> shards(1);
  std::uint64_t shard_bytes = 0, shard_header = 0;
  for (std::size_t i = 0; i < run.layer_count(); ++i) {
    const std::uint64_t part_bytes = state.records[i]->part_bytes;
    std::uint64_t header = 0;
    for (const auto& spec : tensors_of(run, state, i)) header += formats::header_entry_bound(spec);
    if (!shards.back().layers.empty() && (shard_bytes + part_bytes > run.options.max_shard_bytes ||
                                          shard_header + header > formats::kMaxHeaderBytes - 4096)) {
      shards.emplace_back();
      shard_bytes = 0;
      shard_header = 0;
    }
    shards.back().layers.push_back(i);
    shard_bytes += part_bytes;
    shard_header += header;
  }
  const int n = static_cast<int>(shards.size());
  for (int s = 0; s < n; ++s) shards[s].name = n == 1 ? std::string(kQuantizedName) : quantized_shard_name(s + 1, n);
  return shards;
}

// Writes one shard from its layers' .part files, each checked against its record again; returns
// the file as the manifest lists it and adds its tensors to `weight_map`.
PackedFile write_shard(const PackRun& run, const PackState& state, const Shard& shard, json& weight_map,
                       std::uint64_t& data_bytes) {
  std::vector<formats::TensorSpec> specs;
  for (std::size_t i : shard.layers) {
    const auto t = tensors_of(run, state, i);
    for (const auto& spec : t) formats::append_new_key(weight_map, spec.name, shard.name);  // distinct names: O(1)
    specs.insert(specs.end(), t.begin(), t.end());
  }
  const std::map<std::string, std::string> metadata = quantized_metadata();
  formats::SafetensorsWriter writer(run.options.output / shard.name, specs, metadata);
  Xxh128 hash;
  const std::string header = formats::safetensors_header_bytes(specs, metadata);
  hash.update(std::as_bytes(std::span(header.data(), header.size())));
  for (std::size_t i : shard.layers) {
    const std::string data = run.layer_bytes(i, *state.records[i], "while the pack was being assembled");
    const auto bytes = std::as_bytes(std::span(data.data(), data.size()));
    writer.write(bytes);
    hash.update(bytes);
  }
  writer.commit();
  data_bytes += writer.data_bytes();
  return {shard.name, header.size() + writer.data_bytes(), hash.hex()};
}

}  // namespace

class ShardStream {
 public:
  ShardStream(const PackRun& run, std::vector<std::vector<formats::TensorSpec>> planned,
              std::vector<formats::TensorSpec> all)
      : planned_(std::move(planned)),
        header_(formats::safetensors_header_bytes(all, quantized_metadata())),
        writer_(run.options.output / kQuantizedName, run.stream_path(), std::move(all), quantized_metadata()) {
    hash_.update(std::as_bytes(std::span(header_.data(), header_.size())));
  }
  std::optional<std::uint64_t> append(const PackRun& run, std::size_t i, const LayerRecord& r,
                                      std::span<const std::byte> data) {
    if (abandoned_) return std::nullopt;
    std::uint64_t expected = 0;
    for (const auto& spec : planned_.at(i)) expected += spec.nbytes();
    if (i != next_ || !same_specs(tensors_of(run, i, r), planned_[i]) || data.size() != expected) {
      abandoned_ = true;  // the layers streamed so far stay readable in the stream file (their records say where)
      return std::nullopt;
    }
    const std::uint64_t at = header_.size() + writer_.data_bytes_written();
    writer_.write(data);
    hash_.update(data);
    ++next_;
    return at;
  }
  bool complete() const { return !abandoned_ && next_ == planned_.size(); }
  PackedFile commit() {
    writer_.commit();
    return {std::string(kQuantizedName), header_.size() + writer_.data_bytes(), hash_.hex()};
  }

 private:
  std::vector<std::vector<formats::TensorSpec>> planned_;
  std::string header_;
  formats::SafetensorsWriter writer_;
  Xxh128 hash_;
  std::size_t next_ = 0;
  bool abandoned_ = false;
};

std::shared_ptr<ShardStream> open_shard_stream(const PackRun& run, const PackState& state) {
  const std::size_t n = run.layer_count();
  if (n == 0) return nullptr;
  std::vector<std::vector<formats::TensorSpec>> planned(n);
  std::vector<formats::TensorSpec> all;
  std::uint64_t data = 0, header = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (state.records[i]) return nullptr;  // a resumed pack: the .part files hold some layers
    planned[i] = planned_tensors(run, i);
    for (const auto& spec : planned[i]) {
      data += spec.nbytes();
      header += formats::header_entry_bound(spec);
    }
    all.insert(all.end(), planned[i].begin(), planned[i].end());
  }
  if (data > run.options.max_shard_bytes || header > formats::kMaxHeaderBytes - 4096) return nullptr;  // sharded
  return std::make_shared<ShardStream>(run, std::move(planned), std::move(all));
}

std::optional<std::uint64_t> append_to_shard_stream(ShardStream& stream, const PackRun& run, std::size_t i,
                                                    const LayerRecord& r, std::span<const std::byte> data) {
  return stream.append(run, i, r, data);
}

bool shard_stream_complete(const ShardStream& stream) { return stream.complete(); }

AssembledPack assemble_stage(const PackRun& run, const PackState& state) {
  if (state.stream && state.stream->complete()) {
    AssembledPack out;
    out.shards = 1;
    out.layer_shard.assign(run.layer_count(), std::string(kQuantizedName));
    out.files.push_back(state.stream->commit());
    out.quantized_bytes = out.files.back().size;
    pack_internal::maybe_kill("assembly");
    return out;
  }
  const std::vector<Shard> shards = plan_shards(run, state);
  AssembledPack out;
  out.shards = static_cast<int>(shards.size());
  out.layer_shard.resize(run.layer_count());
  json weight_map = json::object();
  std::uint64_t total_data = 0;
  for (const Shard& shard : shards) {
    for (std::size_t i : shard.layers) out.layer_shard[i] = shard.name;
    out.files.push_back(write_shard(run, state, shard, weight_map, total_data));
    out.quantized_bytes += out.files.back().size;
    pack_internal::maybe_kill("assembly");
  }
  if (out.shards > 1) {
    json index;
    index["metadata"] = {{"total_size", total_data}};
    index["weight_map"] = weight_map;
    const std::string text = formats::dump_json(index, 2) + "\n";
    pack_internal::write_text_atomic(run.options.output / kQuantizedIndexName, text);
    out.files.push_back({std::string(kQuantizedIndexName), text.size(), xxh128_hex(text)});
  }
  return out;
}

}  // namespace duquant
