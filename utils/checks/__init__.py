"""Exercise graders, one module per chapter: `from utils.checks import ch00 as check`.

Every grader follows the same contract (see `grading.py`):
  * it prints exactly one verdict: not attempted yet, wrong with a specific hint, or correct;
  * it returns True only when the answer is correct, False otherwise;
  * it never raises into the notebook, whatever the learner's code does.
"""
