"""One package per replicated paper; papers import `common`, never each other."""
