"""The tests of the book's graded exercise sets, one module per set.

Set ``NN_slug`` (its notebooks ``exercises/_source/NN_slug.ipynb`` and
``exercises/NN_slug.ipynb``) has its tests in ``dlbook.exercises.exNN_slug``,
written with :func:`dlbook.grading.question`. They ship with the package, so
``check()`` works in Colab after ``pip install dlbook`` alone.
"""
