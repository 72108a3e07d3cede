#include "duquant/module_order.hpp"

#include <algorithm>
#include <charconv>
#include <map>
#include <memory>
#include <string_view>

namespace duquant {
namespace {

struct Node {
  std::vector<std::pair<std::string, std::unique_ptr<Node>>> children;  // first-appearance order
  std::map<std::string, std::size_t, std::less<>> index;                // name -> position in children
  std::vector<std::size_t> items;  // names that end at this node
};

bool is_number(std::string_view s) {
  return !s.empty() && s.size() <= 18 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

unsigned long long number(std::string_view s) {
  unsigned long long v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

void walk(Node& node, std::vector<std::size_t>& out) {
  out.insert(out.end(), node.items.begin(), node.items.end());
  auto& kids = node.children;
  if (!kids.empty() && std::all_of(kids.begin(), kids.end(), [](const auto& k) { return is_number(k.first); })) {
    std::stable_sort(kids.begin(), kids.end(),
                     [](const auto& a, const auto& b) { return number(a.first) < number(b.first); });
  }
  for (auto& [name, child] : kids) walk(*child, out);
}

}  // namespace

std::vector<std::size_t> module_order(const std::vector<std::string>& names) {
  Node root;
  for (std::size_t i = 0; i < names.size(); ++i) {
    Node* node = &root;
    std::string_view rest = names[i];
    while (true) {
      const std::size_t dot = rest.find('.');
      const std::string_view part = rest.substr(0, dot);
      auto it = node->index.find(part);
      if (it == node->index.end()) {
        it = node->index.emplace(std::string(part), node->children.size()).first;
        node->children.emplace_back(std::string(part), std::make_unique<Node>());
      }
      node = node->children[it->second].second.get();
      if (dot == std::string_view::npos) break;
      rest = rest.substr(dot + 1);
    }
    node->items.push_back(i);
  }
  std::vector<std::size_t> out;
  out.reserve(names.size());
  walk(root, out);
  return out;
}

}  // namespace duquant
