from django.urls import path

from . import views

urlpatterns = [
    path("customers/", views.customer_list),
    path("customers/bulk/", views.customers_bulk),
    path("customers/<int:pk>/", views.customer),
    path("customers/<int:pk>/fail/", views.customer_fail),
    path("customers/<int:pk>/fail-after-commit/", views.customer_fail_after_commit),
    path("customers/<int:pk>/points/", views.customer_points),
    path("customers/<int:pk>/note/", views.customer_note),
    path("customers/<int:pk>/moves/", views.customer_moves),
    path("async/customers/<int:pk>/", views.async_customer_put),
    path("api/customers/<int:pk>/newsletter/", views.api_newsletter),
    path("countries/<str:code>/", views.country_put),
    path("signup/", views.signup),
]
