"""Cross-view attention: views that agree by construction, without training.

A set's anchor views (a few, spread over the orbit) are sampled first, together, each attending to its nearest other
anchors; their self-attention inputs are recorded at every layer and executed step. Every other view then attends to
its nearest anchors' recorded features at the same layer and step, so a view's result depends only on itself and the
anchors, never on which other views share its batch (chunk invariance).

Modules: ``anchors`` (which views are anchors, which anchors a view attends to, chunk order), ``tokens`` (renderer
depth and cameras at an attention layer's token grid, token correspondences between two views), ``attention`` (the
two mixing rules), ``record`` (the anchors' recorded features and the store that keeps them between prompts),
``graph_key`` (what a record is valid for). Its memory plan is in ``glimpse.presets``.
"""
