"""Grid files the grid tests share (YAML text, as a user would write it)."""

#: The smallest grid with several seeds: LeNet-5 on scikit-learn's bundled digits, undefended.
TINY = """
scale: ci
seeds: [0, 1, 2]
attacks: [loss]
cells:
  - arch: lenet5
    dataset: digits
    defenses:
      - {defense: none}
"""
