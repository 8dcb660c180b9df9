// `ftune logits --model DIR [--adapter DIR] --input ROWS.jsonl --out FILE.safetensors`: the
// model's logits (base + adapter) for rows of input_ids, for checks against other libraries.
#include <fmt/format.h>

#include <cstring>
#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "data/dataset.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/llama.h"

namespace ftune {

namespace {

// --out never replaces what the command reads (the model's or adapter's files, the input), and
// replaces anything else only with --overwrite. The file is written beside and renamed into place.
void check_output_file(const std::string& out, bool overwrite, const std::vector<std::string>& read_dirs,
                       const std::string& input) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(out, ec)) return;
  if (fs::is_directory(out, ec)) fail("--out {}: is a directory; name a .safetensors file", out);
  if (fs::equivalent(out, input, ec)) fail("--out {}: is the --input file", out);
  for (const auto& d : read_dirs)
    if (!d.empty() && fs::equivalent(fs::absolute(out).parent_path(), d, ec))
      fail("--out {}: would replace a file of {}, which this command reads; write the logits elsewhere", out, d);
  if (!overwrite) fail("--out {}: exists (pass --overwrite to replace it)", out);
}

}  // namespace

void add_logits_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("logits", "Write the logits of base (+ adapter) for rows of input_ids");
  struct Args {
    std::string model, adapter, input, out;
    bool overwrite = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Hugging Face model directory")->required();
  cmd->add_option("--adapter", a->adapter, "PEFT adapter directory");
  cmd->add_option("--input", a->input, "JSONL rows with input_ids, all of one length")->required();
  cmd->add_option("--out", a->out, "Output .safetensors (input_ids I64 [B,T], logits F32 [B,T,V])")->required();
  cmd->add_flag("--overwrite", a->overwrite, "Replace --out if it exists");
  cmd->callback([a] {
    check_output_file(a->out, a->overwrite, {a->model, a->adapter}, a->input);
    const LlamaConfig cfg = load_llama_config(a->model);
    const LlamaWeights w = load_llama_weights(cfg, CheckpointReader(a->model));
    LoraParams lora;
    if (!a->adapter.empty()) lora = load_peft_adapter(a->adapter, cfg);
    DataSettings ds;
    ds.train = a->input;
    ds.format = "input_ids";
    ds.max_seq_len = cfg.max_position_embeddings;
    ds.strict = true;
    DatasetStats stats;
    const auto rows = load_examples(ds.train, ds, nullptr, cfg.vocab_size, "", &stats);
    std::vector<const std::vector<int32_t>*> ids, labels;
    for (const auto& r : rows) {
      if (r.ids.size() != rows[0].ids.size()) fail("{}: every row must have the same length for `ftune logits`", a->input);
      ids.push_back(&r.ids);
      labels.push_back(&r.labels);
    }
    const Batch b = make_batch(ids, labels, 0);
    ModelOptions opt;
    opt.max_batch = b.batch;
    opt.max_seq = b.seq;
    LlamaCpu model(cfg, w, a->adapter.empty() ? nullptr : &lora, opt);
    const Tensor logits = model.logits(b);
    SafetensorsWriter out;
    std::vector<uint8_t> id_bytes(b.n() * 8);
    for (int64_t i = 0; i < b.n(); ++i) {
      const int64_t v = b.ids[i];
      std::memcpy(id_bytes.data() + i * 8, &v, 8);
    }
    out.add("input_ids", DType::I64, {b.batch, b.seq}, std::move(id_bytes));
    Tensor l3 = logits;
    l3.shape = {b.batch, b.seq, cfg.vocab_size};
    out.add_f32("logits", l3);
    out.write(a->out, {{"format", "pt"}});
    fmt::print(stderr, "ftune: wrote {} ({} rows x {} tokens)\n", a->out, b.batch, b.seq);
  });
}

}  // namespace ftune
