// A command's --out file: checked before the work starts (not a directory, not the input, not an
// existing file unless --overwrite), then written beside and renamed into place, so it appears
// complete or not at all.
#pragma once
#include <string>

namespace ftune {

void check_output_file_path(const std::string& path, bool overwrite, const std::string& input = "");
void write_output_file(const std::string& path, bool overwrite, const std::string& text);

}  // namespace ftune
