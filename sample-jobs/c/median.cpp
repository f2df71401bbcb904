// median: the count, sum, minimum, median and maximum of whitespace-separated integers, in C++
// (iostreams, std::vector, std::sort; built without exceptions).
//
// Input (stdin): integers (each within 64 bits). Output (stdout, ASCII):
// `count=C sum=S min=A median=M max=B`, the median being the lower middle one; `count=0` alone
// for no numbers. Exit code 2 if something other than an integer comes in.
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <vector>

int main() {
    std::vector<std::int64_t> numbers;
    std::int64_t x;
    while (std::cin >> x) numbers.push_back(x);
    if (!std::cin.eof()) {
        std::cerr << "expected whitespace-separated integers\n";
        return 2;
    }
    if (numbers.empty()) {
        std::cout << "count=0\n";
        return 0;
    }
    std::sort(numbers.begin(), numbers.end());
    std::uint64_t sum = 0;
    for (std::int64_t n : numbers) sum += static_cast<std::uint64_t>(n);
    std::cout << "count=" << numbers.size() << " sum=" << static_cast<std::int64_t>(sum)
              << " min=" << numbers.front() << " median=" << numbers[(numbers.size() - 1) / 2]
              << " max=" << numbers.back() << "\n";
    return 0;
}
