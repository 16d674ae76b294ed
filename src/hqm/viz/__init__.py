"""Drawing HOI triplets (``draw``), decoder cross-attention maps (``attention``) and the
``hqm predict`` file runner (``predict_files``)."""
