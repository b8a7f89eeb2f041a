"""The RASP compiler's stages, one module each, run in this order by ``workbench.rasp.compile``:

1. ``graph``: the program's dependency graph (nodes are labels, edges point from input to user);
2. ``values``: the exact finite value set of every SOp;
3. ``components``: an attention head or MLP (as weight blocks over named residual spaces) per SOp;
4. ``layers``: the layer of every component (fewest layers; independent components share one);
5. ``residual``: the residual stream's named one-hot and numerical dimensions;
6. ``assemble``: the transformer_lens ``HookedTransformer``;
7. ``decode``: residual vectors back into RASP values.
"""
