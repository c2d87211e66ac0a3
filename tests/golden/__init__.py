"""Golden histories: recorded by earlier code, replayed by the current code in CI."""
