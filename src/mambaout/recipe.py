"""Every task's recipe, as data, in one import: `mambaout.recipe.Recipe` (Table 2, ImageNet
classification), `digits_recipe()`, `vmamba_recipe()` (VMamba's own),
`finegrained_recipe()` (fine-tuning, Table 9), `SegRecipe` (UperNet, ADE20K), `DetRecipe` (Mask R-CNN,
COCO). Each lives with its task (tasks/<task>/recipe.py); this module is the public name."""
from .engine.recipe import RecipeData
from .tasks.classification.recipe import RECIPES, Recipe, digits_recipe, finegrained_recipe, vmamba_recipe
from .tasks.detection.recipe import DetRecipe
from .tasks.segmentation.recipe import SegRecipe

__all__ = ["RecipeData", "Recipe", "RECIPES", "digits_recipe", "vmamba_recipe", "finegrained_recipe", "SegRecipe", "DetRecipe"]
