// Where `ftune generate` and `ftune serve` decode: --device cpu (fp32, the reference) or gpu (the
// base in --dtype, or in NF4 with --nf4), and the decoder made from those options.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "infer/decoder.h"
#include "model/llama_config.h"
#include "model/weights.h"

namespace ftune {

struct DecoderChoice {
  std::string device = "cpu";  // cpu or gpu
  std::string dtype = "auto";  // gpu: bf16, fp16, fp32, or auto (bf16 where the GPU has it, else fp16)
  bool nf4 = false;            // gpu: the projections in NF4
  bool gpu() const { return device == "gpu"; }
};

void add_decoder_options(CLI::App* cmd, DecoderChoice& c);
// Checks the options' combination (one-line errors naming the flag).
void check_decoder_choice(const DecoderChoice& c);
// The CPU decoder over `host` (which must outlive it), or a GPU decoder reading the weights from
// the model directory (host unused). A CPU-only build refuses --device gpu.
std::unique_ptr<Decoder> make_decoder(const DecoderChoice& c, const LlamaConfig& cfg, const std::string& model_dir,
                                      const LlamaWeights* host);

}  // namespace ftune
