// Each subcommand registers itself on the CLI11 app; the callbacks run after parsing.
#pragma once
#include <CLI/CLI.hpp>

namespace ftune {

void add_train_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_init_model_command(CLI::App& app);
void add_logits_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_data_command(CLI::App& app);
void add_merge_command(CLI::App& app);
void add_plot_command(CLI::App& app);
void add_plan_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_eval_command(CLI::App& app);

}  // namespace ftune
